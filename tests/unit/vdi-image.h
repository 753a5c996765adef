/*
 * vdi-image.h - builds VDI images inside mem nodes for the vdi unit tests
 * (test-vdi*.c), laid out as qemu-img lays them out, and opens the vdi driver
 * on top.  Header-only so it is not linked into unrelated suites.
 */
#ifndef UBLKD_TESTS_VDI_IMAGE_H
#define UBLKD_TESTS_VDI_IMAGE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "../../drivers/vdi-int.h"

typedef struct VdiTestImage {
    BlockDriverState *file;   /* the mem node holding the image */
    BlockDriverState *bs;     /* the vdi node, NULL if open failed */
    BdrvChild *child;         /* edge for bdrv_pread/pwrite */
    Error *err;               /* open's error, if any */
    uint32_t offset_data;
} VdiTestImage;

static inline uint32_t vdi_test_bmap_bytes(uint64_t disk_size)
{
    return ALIGN_UP(DIV_ROUND_UP(disk_size, VDI_BLOCK_SIZE) * 4, 512);
}

/* Write a fresh image of disk_size into a new growable mem node: header at
 * 0, map at 512, data after the map; static images have block i in slot i. */
static inline BlockDriverState *vdi_test_make_file(uint64_t disk_size, bool is_static)
{
    uint32_t blocks = DIV_ROUND_UP(disk_size, VDI_BLOCK_SIZE);
    uint32_t bmap_bytes = vdi_test_bmap_bytes(disk_size);
    uint64_t file_size = 512 + bmap_bytes + (is_static ? (uint64_t)blocks * VDI_BLOCK_SIZE : 0);
    static int serial;
    char name[32];
    snprintf(name, sizeof(name), "vdifile%d", serial++);
    MemConfig cfg = { .size = file_size, .growable = true, .node_name = name };
    BlockDriverState *file = mem_node_new(&cfg);
    uint8_t h[512] = { 0 };
    uint32_t *bmap = calloc(1, bmap_bytes ? bmap_bytes : 1);

    memcpy(h, VDI_TEXT, sizeof(VDI_TEXT) - 1);
    vdi_st32(h, VDI_OFF_SIGNATURE, VDI_SIGNATURE);
    vdi_st32(h, VDI_OFF_VERSION, VDI_VERSION_1_1);
    vdi_st32(h, VDI_OFF_HEADER_SIZE, VDI_HEADER_SIZE);
    vdi_st32(h, VDI_OFF_IMAGE_TYPE, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    vdi_st32(h, VDI_OFF_OFFSET_BMAP, 512);
    vdi_st32(h, VDI_OFF_OFFSET_DATA, 512 + bmap_bytes);
    vdi_st32(h, VDI_OFF_SECTOR_SIZE, 512);
    vdi_st64(h, VDI_OFF_DISK_SIZE, disk_size);
    vdi_st32(h, VDI_OFF_BLOCK_SIZE, VDI_BLOCK_SIZE);
    vdi_st32(h, VDI_OFF_BLOCKS_IN_IMAGE, blocks);
    vdi_st32(h, VDI_OFF_BLOCKS_ALLOCATED, is_static ? blocks : 0);
    h[VDI_OFF_UUID_IMAGE] = 0x11;
    h[VDI_OFF_UUID_LAST_SNAP] = 0x22;
    for (uint32_t i = 0; i < blocks; i++) {
        bmap[i] = htole32(is_static ? i : VDI_UNALLOCATED);
    }
    mem_write_raw(file, 0, h, 512);
    if (bmap_bytes) {
        mem_write_raw(file, 512, bmap, bmap_bytes);
    }
    free(bmap);
    return file;
}

static inline uint32_t vdi_test_hdr32(BlockDriverState *file, int off)
{
    uint8_t h[512];
    mem_read_raw(file, 0, h, 512);
    return vdi_ld32(h, off);
}

static inline void vdi_test_set_hdr32(BlockDriverState *file, int off, uint32_t v)
{
    uint32_t le = htole32(v);
    mem_write_raw(file, off, &le, 4);
}

static inline void vdi_test_set_hdr64(BlockDriverState *file, int off, uint64_t v)
{
    uint64_t le = htole64(v);
    mem_write_raw(file, off, &le, 8);
}

static inline uint32_t vdi_test_entry(BlockDriverState *file, uint32_t block)
{
    uint32_t le;
    mem_read_raw(file, vdi_test_hdr32(file, VDI_OFF_OFFSET_BMAP) + block * 4, &le, 4);
    return le32toh(le);
}

static inline void vdi_test_set_entry(BlockDriverState *file, uint32_t block, uint32_t v)
{
    uint32_t le = htole32(v);
    mem_write_raw(file, vdi_test_hdr32(file, VDI_OFF_OFFSET_BMAP) + block * 4, &le, 4);
}

/* Cut the image file to len bytes (a truncated image). */
static inline void vdi_test_truncate(BlockDriverState *file, int64_t len)
{
    BdrvChild *c = test_child_new(file);
    if (bdrv_truncate(c, len, true, PREALLOC_MODE_OFF, 0, NULL) < 0) {
        fail_msg("cannot truncate %s to %lld", file->node_name, (long long)len);
    }
    test_child_free(c);
}

/* Open vdi over file (takes over the caller's reference to file). */
static inline VdiTestImage vdi_test_open(BlockDriverState *file, int flags)
{
    VdiTestImage img = { .file = file };
    OptDict *opts = optdict_new();

    img.offset_data = mem_size(file) >= 512 ? vdi_test_hdr32(file, VDI_OFF_OFFSET_DATA) : 0;
    optdict_set(opts, "driver", "vdi");
    optdict_set(opts, "file", file->node_name);
    img.bs = bdrv_open(NULL, opts, flags, &img.err);
    if (img.bs) {
        img.child = test_child_new(img.bs);
    }
    return img;
}

static inline void vdi_test_close(VdiTestImage *img)
{
    test_child_free(img->child);
    if (img->bs) {
        bdrv_unref(img->bs);
    }
    bdrv_unref(img->file);
    if (img->err) {
        error_free(img->err);
    }
    memset(img, 0, sizeof(*img));
}

/* Open expecting failure; returns whether the message contains want. */
static inline void vdi_test_expect_open_error(BlockDriverState *file, const char *want)
{
    VdiTestImage img = vdi_test_open(file, BDRV_O_RDWR);
    if (img.bs) {
        vdi_test_close(&img);
        fail_msg("open succeeded, expected \"%s\"", want);
    }
    assert_non_null(img.err);
    if (!strstr(error_get_pretty(img.err), want)) {
        fail_msg("error \"%s\" lacks \"%s\"", error_get_pretty(img.err), want);
    }
    /* every message names the image */
    assert_non_null(strstr(error_get_pretty(img.err), file->node_name));
    vdi_test_close(&img);
}

#endif
