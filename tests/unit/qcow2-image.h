/*
 * qcow2-image.h - builds small qcow2 images inside mem nodes for the qcow2
 * unit tests (test-qcow2*.c) and opens the driver on top.  Header-only so
 * it is not linked into unrelated suites.
 *
 * Layout (C = cluster size): header in cluster 0, refcount table in 1,
 * refcount block (16-bit) in 2, L1 table in 3, the L2 table of L1[0] in 4,
 * data clusters from 5 on (Q2_DATA(i) is the offset of data cluster i).
 */
#ifndef UBLKD_TESTS_QCOW2_IMAGE_H
#define UBLKD_TESTS_QCOW2_IMAGE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "../../drivers/qcow2-int.h"

typedef struct Q2Image {
    BlockDriverState *file;
    BlockDriverState *bs;
    BdrvChild *child;
    Error *err;
    uint32_t cb;              /* cluster bits */
    bool extl2;
} Q2Image;

#define Q2_C(img)        ((uint64_t)1 << (img)->cb)
#define Q2_DATA(img, i)  ((5 + (uint64_t)(i)) << (img)->cb)

static inline void q2_put32(BlockDriverState *f, int64_t off, uint32_t v)
{
    uint32_t be = htobe32(v);
    mem_write_raw(f, off, &be, 4);
}
static inline void q2_put64(BlockDriverState *f, int64_t off, uint64_t v)
{
    uint64_t be = htobe64(v);
    mem_write_raw(f, off, &be, 8);
}

/* A version 3 image of `size` bytes with one L2 table and data_clusters
 * data clusters allocated in the file (not yet mapped). */
static inline Q2Image q2_make(uint32_t cb, uint64_t size, bool extl2, int data_clusters)
{
    static int serial;
    char name[32];
    Q2Image img = { .cb = cb, .extl2 = extl2 };
    uint64_t c = 1ULL << cb;
    snprintf(name, sizeof(name), "q2file%d", serial++);
    MemConfig cfg = { .size = (int64_t)((5 + data_clusters) * c), .growable = true,
                      .node_name = name };
    img.file = mem_node_new(&cfg);
    BlockDriverState *f = img.file;
    uint32_t l2_bits = cb - (extl2 ? 4 : 3);
    uint64_t l1_size = DIV_ROUND_UP(size, c << l2_bits);

    q2_put32(f, QH_MAGIC, QCOW2_MAGIC);
    q2_put32(f, QH_VERSION, 3);
    q2_put32(f, QH_CLUSTER_BITS, cb);
    q2_put64(f, QH_SIZE, size);
    q2_put32(f, QH_L1_SIZE, (uint32_t)l1_size);
    q2_put64(f, QH_L1_OFFSET, 3 * c);
    q2_put64(f, QH_REFTABLE_OFFSET, c);
    q2_put32(f, QH_REFTABLE_CLUSTERS, 1);
    q2_put64(f, QH_INCOMPAT, extl2 ? QCOW2_INCOMPAT_EXTL2 : 0);
    q2_put32(f, QH_REFCOUNT_ORDER, 4);
    q2_put32(f, QH_HEADER_LENGTH, 112);
    q2_put64(f, c, 2 * c);                           /* reftable[0] -> block */
    for (int i = 0; i < 5 + data_clusters; i++) {
        uint16_t one = htobe16(1);
        mem_write_raw(f, (int64_t)(2 * c + i * 2), &one, 2);
    }
    if (l1_size) {
        q2_put64(f, 3 * c, (4 * c) | QCOW2_OFLAG_COPIED);
    }
    return img;
}

/* Set L2 entry i of the L2 table of L1[0] (and its bitmap with extended L2). */
static inline void q2_set_l2(Q2Image *img, uint32_t i, uint64_t entry, uint64_t bitmap)
{
    uint32_t esize = img->extl2 ? 16 : 8;
    q2_put64(img->file, (int64_t)(4 * Q2_C(img) + i * esize), entry);
    if (img->extl2) {
        q2_put64(img->file, (int64_t)(4 * Q2_C(img) + i * esize + 8), bitmap);
    }
}

/* Add a header extension at byte offset off of cluster 0; returns the next. */
static inline int64_t q2_add_ext(Q2Image *img, int64_t off, uint32_t type, const void *data,
                                 uint32_t len)
{
    q2_put32(img->file, off, type);
    q2_put32(img->file, off + 4, len);
    if (len) {
        mem_write_raw(img->file, off + 8, data, len);
    }
    return off + 8 + ALIGN_UP((int64_t)len, 8);
}

static inline void q2_open(Q2Image *img, int flags, const char *extra_key, const char *extra_val)
{
    OptDict *opts = optdict_new();
    optdict_set(opts, "driver", "qcow2");
    optdict_set(opts, "file", img->file->node_name);
    if (extra_key) {
        optdict_set(opts, extra_key, extra_val);
    }
    img->bs = bdrv_open(NULL, opts, flags, &img->err);
    if (img->bs) {
        img->child = test_child_new(img->bs);
    }
}

static inline void q2_close(Q2Image *img)
{
    test_child_free(img->child);
    img->child = NULL;
    if (img->bs) {
        bdrv_unref(img->bs);
        img->bs = NULL;
    }
    if (img->err) {
        error_free(img->err);
        img->err = NULL;
    }
}

static inline void q2_free(Q2Image *img)
{
    q2_close(img);
    bdrv_unref(img->file);
    img->file = NULL;
}

/* Open (read-only unless flags say otherwise) expecting failure with a
 * message containing want and naming the image; frees the image. */
static inline void q2_expect_open_error(Q2Image *img, int flags, const char *want)
{
    q2_open(img, flags, NULL, NULL);
    if (img->bs) {
        q2_free(img);
        fail_msg("open succeeded, expected \"%s\"", want);
    }
    assert_non_null(img->err);
    if (!strstr(error_get_pretty(img->err), want)) {
        fail_msg("error \"%s\" lacks \"%s\"", error_get_pretty(img->err), want);
    }
    assert_non_null(strstr(error_get_pretty(img->err), img->file->node_name));
    q2_free(img);
}

#endif
