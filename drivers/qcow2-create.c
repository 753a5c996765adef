/*
 * qcow2-create.c - `img create -f qcow2`: images laid out byte for byte as
 * qemu-img 7.2 lays them out.
 *
 * qemu-img does not compute a layout: it writes a minimal image (header,
 * refcount table, one refcount block), opens it and lets the driver's
 * allocator grow it (L1 table, then for preallocation L2 tables and data
 * clusters, refcount blocks as they become necessary, a new refcount table
 * when the old one is full).  Where each structure lands follows from that
 * allocator's rules (first-fit from a moving free-cluster index, refcount
 * blocks that describe themselves, restarts after a new refcount block).
 * So this file replays those steps on an in-memory model of the image
 * (Q2Sim) and then writes the result: structures that were freed on the
 * way (an old refcount table) are written when they are given up, exactly
 * as their bytes stay in the file behind QEMU, live ones at the end.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

const CreateOptDesc qcow2_create_opts[] = {
    { "cluster_size", "size", "qcow2 cluster size", "65536" },
    { "extended_l2", "bool", "Extended L2 tables", "off" },
    { "preallocation", "string", "Preallocation mode (allowed values: off, metadata, falloc,"
      " full)", NULL },
    { "compression_type", "string", "Compression method used for image cluster compression",
      "zlib" },
    { "size", "size", "Virtual disk size", NULL },
    { "compat", "string", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", "string", "File name of a base image", NULL },
    { "backing_fmt", "string", "Image format of the base image", NULL },
    { "data_file", "string", "File name of an external data file", NULL },
    { "data_file_raw", "bool", "The external data file must stay valid as a raw image", NULL },
    { "lazy_refcounts", "bool", "Postpone refcount updates", "off" },
    { "refcount_bits", "number", "Width of a reference count entry in bits", "16" },
    { NULL, NULL, NULL, NULL },
};

/* The image being built: what QEMU's BDRVQcow2State would hold. */
typedef struct Q2Sim {
    BdrvChild *file;
    uint32_t cb, order, rb_bits;
    uint64_t cs, rb_size;            /* refcounts per block */
    uint32_t l2_entry_size;
    uint64_t l2_size;                /* entries per L2 table */
    bool extl2, data_file;
    uint64_t *reftable;              /* host order */
    uint64_t reftable_size, reftable_offset;
    uint64_t *rb_offsets;            /* refcount blocks: offset -> buffer */
    uint8_t **rb_bufs;
    size_t nb_rb, rb_alloc;
    uint64_t *l1;
    uint64_t l1_size, l1_offset;
    uint8_t **l2;                    /* by L1 index; written out and freed when full */
    uint64_t free_cluster_index;
    uint64_t file_len;               /* what bdrv_getlength would say */
} Q2Sim;

static void note_write(Q2Sim *s, uint64_t off, uint64_t len)
{
    s->file_len = MAX(s->file_len, off + len);
}

static uint8_t *rb_find(Q2Sim *s, uint64_t offset)
{
    for (size_t i = 0; i < s->nb_rb; i++) {
        if (s->rb_offsets[i] == offset) {
            return s->rb_bufs[i];
        }
    }
    return NULL;
}

/* A zeroed refcount block at offset (QEMU's cache_get_empty + memset). */
static uint8_t *rb_new(Q2Sim *s, uint64_t offset)
{
    uint8_t *b = rb_find(s, offset);
    if (b) {
        memset(b, 0, s->cs);
        return b;
    }
    if (s->nb_rb == s->rb_alloc) {
        size_t n = s->rb_alloc ? s->rb_alloc * 2 : 16;
        uint64_t *o = realloc(s->rb_offsets, n * sizeof(*o));
        if (!o) {
            return NULL;
        }
        s->rb_offsets = o;
        uint8_t **bb = realloc(s->rb_bufs, n * sizeof(*bb));
        if (!bb) {
            return NULL;
        }
        s->rb_bufs = bb;
        s->rb_alloc = n;
    }
    b = calloc(1, s->cs);
    if (!b) {
        return NULL;
    }
    s->rb_offsets[s->nb_rb] = offset;
    s->rb_bufs[s->nb_rb++] = b;
    return b;
}

static uint64_t rc_get(const Q2Sim *s, const uint8_t *b, uint64_t i)
{
    switch (s->order) {
    case 0: return (b[i / 8] >> (i % 8)) & 1;
    case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return b[i];
    case 4: return qcow2_ld16(b, i * 2);
    case 5: return qcow2_ld32(b, i * 4);
    default: return qcow2_ld64(b, i * 8);
    }
}

static void rc_set(const Q2Sim *s, uint8_t *b, uint64_t i, uint64_t v)
{
    switch (s->order) {
    case 0: b[i / 8] = (uint8_t)((b[i / 8] & ~(1 << (i % 8))) | (v << (i % 8))); break;
    case 1: b[i / 4] = (uint8_t)((b[i / 4] & ~(3 << (2 * (i % 4)))) | (v << (2 * (i % 4))));
        break;
    case 2: b[i / 2] = (uint8_t)((b[i / 2] & ~(15 << (4 * (i % 2)))) | (v << (4 * (i % 2))));
        break;
    case 3: b[i] = (uint8_t)v; break;
    case 4: { uint16_t x = htobe16((uint16_t)v); memcpy(b + i * 2, &x, 2); break; }
    case 5: { uint32_t x = htobe32((uint32_t)v); memcpy(b + i * 4, &x, 4); break; }
    default: { uint64_t x = htobe64(v); memcpy(b + i * 8, &x, 8); break; }
    }
}

static uint64_t get_refcount(Q2Sim *s, uint64_t ci)
{
    uint64_t ti = ci >> s->rb_bits;
    if (ti >= s->reftable_size || !s->reftable[ti]) {
        return 0;
    }
    uint8_t *b = rb_find(s, s->reftable[ti]);
    return b ? rc_get(s, b, ci & (s->rb_size - 1)) : 0;
}

static int64_t alloc_clusters_noref(Q2Sim *s, uint64_t size)
{
    uint64_t n = DIV_ROUND_UP(size, s->cs);
retry:
    for (uint64_t i = 0; i < n; i++) {
        uint64_t ci = s->free_cluster_index++;
        if (get_refcount(s, ci)) {
            goto retry;
        }
    }
    if (s->free_cluster_index > (UINT64_C(1) << (56 - s->cb))) {
        return -EFBIG;
    }
    return (int64_t)((s->free_cluster_index - n) << s->cb);
}

static int update_refcount(Q2Sim *s, uint64_t offset, uint64_t length, bool decrease);
static int64_t refcount_area(Q2Sim *s, uint64_t start_offset, uint64_t additional_clusters,
                             bool exact_size, uint64_t new_refblock_index,
                             uint64_t new_refblock_offset);

/* QEMU's alloc_refcount_block: 0 with *block, or -EAGAIN after making a
 * new refcount block (the caller's clusters may now be taken). */
static int alloc_refcount_block(Q2Sim *s, uint64_t ci, uint8_t **block)
{
    uint64_t ti = ci >> s->rb_bits;
    if (ti < s->reftable_size && s->reftable[ti]) {
        *block = rb_find(s, s->reftable[ti]);
        return *block ? 0 : -EIO;
    }
    int64_t new_block = alloc_clusters_noref(s, s->cs);
    if (new_block <= 0) {
        return new_block < 0 ? (int)new_block : -EIO;
    }
    if (((uint64_t)new_block >> (s->cb + s->rb_bits)) == ti) {
        /* it describes itself */
        uint8_t *b = rb_new(s, (uint64_t)new_block);
        if (!b) {
            return -ENOMEM;
        }
        rc_set(s, b, ((uint64_t)new_block >> s->cb) & (s->rb_size - 1), 1);
    } else {
        int ret = update_refcount(s, (uint64_t)new_block, s->cs, false);
        if (ret < 0) {
            return ret;
        }
        if (!rb_new(s, (uint64_t)new_block)) {
            return -ENOMEM;
        }
    }
    note_write(s, (uint64_t)new_block, s->cs);
    if (ti < s->reftable_size) {
        s->reftable[ti] = (uint64_t)new_block;
        return -EAGAIN;
    }
    /* The table is full: a new one, with refcount blocks describing
     * themselves and it, goes after everything in use. */
    uint64_t blocks_used = DIV_ROUND_UP(MAX(ci + 1, ((uint64_t)new_block >> s->cb) + 1),
                                        s->rb_size);
    int64_t r = refcount_area(s, blocks_used * s->rb_size * s->cs, 0, false, ti,
                              (uint64_t)new_block);
    return r < 0 ? (int)r : -EAGAIN;
}

static int update_refcount(Q2Sim *s, uint64_t offset, uint64_t length, bool decrease)
{
    if (!length) {
        return 0;
    }
    uint64_t start = offset & ~(s->cs - 1), last = (offset + length - 1) & ~(s->cs - 1);
    uint64_t cluster_offset;
    int64_t old_ti = -1;
    uint8_t *block = NULL;
    int ret = 0;

    for (cluster_offset = start; cluster_offset <= last; cluster_offset += s->cs) {
        uint64_t ci = cluster_offset >> s->cb;
        int64_t ti = (int64_t)(ci >> s->rb_bits);
        if (ti != old_ti) {
            ret = alloc_refcount_block(s, ci, &block);
            if (ret == -EAGAIN && s->free_cluster_index > (start >> s->cb)) {
                s->free_cluster_index = start >> s->cb;
            }
            if (ret < 0) {
                break;
            }
        }
        old_ti = ti;
        uint64_t i = ci & (s->rb_size - 1);
        uint64_t rc = rc_get(s, block, i);
        uint64_t max = s->order == 6 ? UINT64_MAX : (UINT64_C(1) << (1U << s->order)) - 1;
        if (decrease ? rc == 0 : rc == max) {
            ret = -EINVAL;
            break;
        }
        rc = decrease ? rc - 1 : rc + 1;
        if (rc == 0 && ci < s->free_cluster_index) {
            s->free_cluster_index = ci;
        }
        rc_set(s, block, i, rc);
    }
    if (ret < 0) {
        /* undo what was done, as QEMU does */
        update_refcount(s, offset, cluster_offset - offset, !decrease);
    }
    return ret;
}

static int64_t alloc_clusters(Q2Sim *s, uint64_t size)
{
    int64_t offset;
    int ret;
    do {
        offset = alloc_clusters_noref(s, size);
        if (offset < 0) {
            return offset;
        }
        ret = update_refcount(s, (uint64_t)offset, size, false);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : offset;
}

static int64_t alloc_clusters_at(Q2Sim *s, uint64_t offset, uint64_t nb)
{
    uint64_t i;
    int ret;
    do {
        uint64_t ci = offset >> s->cb;
        for (i = 0; i < nb; i++) {
            if (get_refcount(s, ci++)) {
                break;
            }
        }
        ret = update_refcount(s, offset, i << s->cb, false);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : (int64_t)i;
}

/* QEMU's qcow2_refcount_metadata_size (refcount blocks needed). */
static uint64_t refblocks_needed(uint64_t clusters, uint64_t cs, uint32_t order, bool generous)
{
    uint64_t per_table = cs / 8, per_block = cs * 8 >> order;
    uint64_t table = 0, blocks = 0, last, n = 0;
    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP(blocks, per_table);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += DIV_ROUND_UP(table, 2);
            n = 0;
            generous = false;
        }
    } while (n != last);
    return blocks;
}

/* Write a big-endian copy of a host-order u64 table. */
static int write_table(Q2Sim *s, uint64_t offset, const uint64_t *t, uint64_t n, uint64_t bytes)
{
    uint8_t *buf = calloc(1, bytes ? bytes : 1);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t be = htobe64(t[i]);
        memcpy(buf + i * 8, &be, 8);
    }
    int ret = bdrv_pwrite(s->file, (int64_t)offset, (int64_t)bytes, buf, 0);
    free(buf);
    note_write(s, offset, bytes);
    return ret < 0 ? ret : 0;
}

/* QEMU's qcow2_refcount_area: new refcount blocks and table from
 * start_offset on, covering the image plus additional_clusters. */
static int64_t refcount_area(Q2Sim *s, uint64_t start_offset, uint64_t additional_clusters,
                             bool exact_size, uint64_t new_refblock_index,
                             uint64_t new_refblock_offset)
{
    uint64_t total = refblocks_needed(start_offset / s->cs + additional_clusters, s->cs,
                                      s->order, !exact_size);
    if (total > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }
    uint64_t area_index = (start_offset / s->cs) / s->rb_size;
    uint64_t table_size = exact_size ? total : total + DIV_ROUND_UP(total, 2);
    table_size = ALIGN_UP(table_size, s->cs / 8);
    uint64_t table_clusters = table_size * 8 / s->cs;
    if (table_size > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }
    uint64_t *t = calloc(table_size, 8);
    if (!t) {
        return -ENOMEM;
    }
    uint64_t max_index = 0;          /* QEMU copies up to the last used entry */
    for (uint64_t i = 0; i < s->reftable_size; i++) {
        if (s->reftable[i]) {
            max_index = i;
        }
    }
    memcpy(t, s->reftable, MIN(table_size, max_index + 1) * 8);
    if (new_refblock_offset) {
        t[new_refblock_index] = new_refblock_offset;
    }
    uint64_t additional = 0;
    for (uint64_t i = area_index; i < total; i++) {
        additional += !t[i];
    }
    uint64_t table_offset = start_offset + additional * s->cs;
    uint64_t end_offset = table_offset + table_clusters * s->cs;
    uint64_t block_offset = start_offset;
    for (uint64_t i = area_index; i < total; i++) {
        uint8_t *b;
        if (t[i]) {
            b = rb_find(s, t[i]);
        } else {
            b = rb_new(s, block_offset);
            t[i] = block_offset;
            note_write(s, block_offset, s->cs);
            block_offset += s->cs;
        }
        if (!b) {
            free(t);
            return -ENOMEM;
        }
        uint64_t first = i * s->rb_size * s->cs;
        if (first < end_offset) {
            uint64_t j = first < start_offset ? (start_offset - first) / s->cs : 0;
            uint64_t end = MIN((end_offset - first) / s->cs, s->rb_size);
            for (; j < end; j++) {
                rc_set(s, b, j, 1);
            }
        }
    }
    int ret = write_table(s, table_offset, t, table_size, table_size * 8);
    if (ret < 0) {
        free(t);
        return ret;
    }
    uint64_t old_offset = s->reftable_offset, old_size = s->reftable_size;
    /* the old table's bytes stay in the file */
    ret = write_table(s, old_offset, s->reftable, old_size, old_size * 8);
    free(s->reftable);
    s->reftable = t;
    s->reftable_size = table_size;
    s->reftable_offset = table_offset;
    if (ret < 0) {
        return ret;
    }
    ret = update_refcount(s, old_offset, old_size * 8, true);
    return ret < 0 ? ret : (int64_t)end_offset;
}

static uint64_t size_to_l1(const Q2Sim *s, uint64_t size)
{
    uint32_t shift = s->cb + (s->cb - (s->extl2 ? 4 : 3));
    return (size + (UINT64_C(1) << shift) - 1) >> shift;
}

/* QEMU's qcow2_grow_l1_table(exact_size) from an empty L1. */
static int grow_l1(Q2Sim *s, uint64_t new_size)
{
    if (new_size <= s->l1_size) {
        return 0;
    }
    int64_t off = alloc_clusters(s, new_size * 8);
    if (off < 0) {
        return (int)off;
    }
    uint64_t *l1 = calloc(new_size, 8);
    uint8_t **l2 = calloc(new_size, sizeof(*l2));
    if (!l1 || !l2) {
        free(l1);
        free(l2);
        return -ENOMEM;
    }
    s->l1 = l1;
    s->l2 = l2;
    s->l1_size = new_size;
    s->l1_offset = (uint64_t)off;
    return write_table(s, s->l1_offset, s->l1, s->l1_size, s->l1_size * 8);
}

/* QEMU's l2_allocate for an empty L1 entry: a zeroed table written at once. */
static int l2_allocate(Q2Sim *s, uint64_t l1_index)
{
    int64_t off = alloc_clusters(s, s->cs);
    if (off < 0) {
        return (int)off;
    }
    s->l2[l1_index] = calloc(1, s->cs);
    if (!s->l2[l1_index]) {
        return -ENOMEM;
    }
    note_write(s, (uint64_t)off, s->cs);
    s->l1[l1_index] = (uint64_t)off | QCOW2_OFLAG_COPIED;
    return 0;
}

/* Write L2 table l1_index out and free it: it will not change again. */
static int l2_done(Q2Sim *s, uint64_t l1_index)
{
    if (!s->l2[l1_index]) {
        return 0;
    }
    uint64_t off = s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;
    int ret = bdrv_pwrite(s->file, (int64_t)off, (int64_t)s->cs, s->l2[l1_index], 0);
    free(s->l2[l1_index]);
    s->l2[l1_index] = NULL;
    return ret < 0 ? ret : 0;
}

static void set_l2(Q2Sim *s, uint64_t guest_cluster, uint64_t entry, uint64_t bitmap)
{
    uint64_t l1_index = guest_cluster / s->l2_size, i = guest_cluster % s->l2_size;
    uint8_t *t = s->l2[l1_index];
    uint64_t be = htobe64(entry);
    memcpy(t + i * s->l2_entry_size, &be, 8);
    if (s->extl2) {
        be = htobe64(bitmap);
        memcpy(t + i * 16 + 8, &be, 8);
    }
}

/* preallocation=metadata (and falloc/full with a data file): QEMU's
 * preallocate_co.  Per L2 table: the table, then its data clusters. */
static int preallocate_metadata(Q2Sim *s, uint64_t size, uint64_t *end)
{
    uint64_t guest = 0, nb_total = DIV_ROUND_UP(size, s->cs);
    uint64_t last_host = 0, last_bytes = 0;

    while (guest < nb_total) {
        uint64_t l1_index = guest / s->l2_size;
        if (!s->l1[l1_index]) {
            int ret = l2_allocate(s, l1_index);
            if (ret < 0) {
                return ret;
            }
        }
        uint64_t nb = MIN(nb_total - guest, s->l2_size - guest % s->l2_size);
        nb = MIN(nb, (uint64_t)(BDRV_REQUEST_MAX_BYTES >> s->cb));
        uint64_t host;
        if (s->data_file) {
            host = guest << s->cb;
        } else {
            int64_t off = alloc_clusters(s, nb << s->cb);
            if (off < 0) {
                return (int)off;
            }
            host = (uint64_t)off;
        }
        for (uint64_t i = 0; i < nb; i++) {
            set_l2(s, guest + i, (host + (i << s->cb)) | QCOW2_OFLAG_COPIED, 0);
        }
        last_host = host;
        last_bytes = MIN(nb << s->cb, size - (guest << s->cb));
        guest += nb;
        if (guest % s->l2_size == 0 || guest == nb_total) {
            int ret = l2_done(s, l1_index);
            if (ret < 0) {
                return ret;
            }
        }
    }
    /* The copy-on-write of the tail of a last partial cluster (or
     * subcluster) writes zeros there. */
    *end = last_host + ALIGN_UP(last_bytes, s->cs >> (s->extl2 ? 5 : 0));
    return 0;
}

/* preallocation=falloc/full without a data file: QEMU's qcow2_co_truncate
 * builds refcount structures for everything first, puts the data clusters
 * after them in one run, then the L2 tables wherever they fit. */
static int preallocate_data(Q2Sim *s, uint64_t size, PreallocMode mode, Error **errp)
{
    uint64_t last = s->file_len ? (s->file_len - 1) >> s->cb : 0;
    while (last > 0 && !get_refcount(s, last)) {
        last--;
    }
    uint64_t old_file_size = (last + 1) << s->cb;
    uint64_t nb_data = ALIGN_UP(size, s->cs) >> s->cb;
    uint64_t nb_l2 = DIV_ROUND_UP(nb_data, s->cs / s->l2_entry_size) + 1;
    int64_t start = refcount_area(s, old_file_size, nb_data + nb_l2, true, 0, 0);
    if (start < 0) {
        return (int)start;
    }
    int64_t got = alloc_clusters_at(s, (uint64_t)start, nb_data);
    if (got < 0) {
        return (int)got;
    }
    if ((uint64_t)got != nb_data) {
        return -EIO;
    }
    /* The data area, before the L2 tables that may follow it. */
    uint64_t end = (uint64_t)start + (nb_data << s->cb);
    if (end > s->file_len) {
        int ret = bdrv_truncate(s->file, (int64_t)end, false, mode, 0, errp);
        if (ret < 0) {
            return ret;
        }
        s->file_len = end;
    }
    uint64_t host = (uint64_t)start;
    for (uint64_t guest = 0; guest < nb_data;) {
        uint64_t l1_index = guest / s->l2_size;
        uint64_t nb = MIN(nb_data - guest, s->l2_size - guest % s->l2_size);
        if (!s->l1[l1_index]) {
            int ret = l2_allocate(s, l1_index);
            if (ret < 0) {
                return ret;
            }
        }
        for (uint64_t i = 0; i < nb; i++) {
            set_l2(s, guest + i, (host + (i << s->cb)) | QCOW2_OFLAG_COPIED, 0);
        }
        guest += nb;
        host += nb << s->cb;
        int ret = l2_done(s, l1_index);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static size_t header_ext(uint8_t *buf, uint32_t type, const void *data, uint32_t len)
{
    uint32_t be = htobe32(type);
    memcpy(buf, &be, 4);
    be = htobe32(len);
    memcpy(buf + 4, &be, 4);
    if (len) {
        memcpy(buf + 8, data, len);
    }
    return 8 + ALIGN_UP((size_t)len, 8);
}

typedef struct Q2CreateOpts {
    uint64_t size, cluster_size;
    int version;
    bool extl2, lazy, data_file_raw;
    int prealloc;
    int compression;
    uint64_t refcount_bits;
    char *backing_file, *backing_fmt, *data_file;
} Q2CreateOpts;

/* The header cluster as QEMU's qcow2_update_header writes it. */
static int build_header(const Q2Sim *s, const Q2CreateOpts *o, uint64_t size, uint8_t *buf,
                        Error **errp, const char *filename)
{
    size_t hl = o->version == 3 ? 112 : QCOW2_V2_HEADER_LENGTH;
    uint64_t incompat = 0, compat = 0, autoclear = 0;

    memset(buf, 0, s->cs);
    if (o->data_file) {
        incompat |= QCOW2_INCOMPAT_DATA_FILE;
    }
    if (o->compression != QCOW2_COMPRESSION_ZLIB) {
        incompat |= QCOW2_INCOMPAT_COMPRESSION;
    }
    if (o->extl2) {
        incompat |= QCOW2_INCOMPAT_EXTL2;
    }
    if (o->lazy) {
        compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    if (o->data_file_raw) {
        autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
    }
    struct { size_t off; uint64_t v; int w; } f[] = {
        { QH_MAGIC, QCOW2_MAGIC, 4 }, { QH_VERSION, (uint64_t)o->version, 4 },
        { QH_CLUSTER_BITS, s->cb, 4 }, { QH_SIZE, size, 8 },
        { QH_L1_SIZE, s->l1_size, 4 }, { QH_L1_OFFSET, s->l1_offset, 8 },
        { QH_REFTABLE_OFFSET, s->reftable_offset, 8 },
        { QH_REFTABLE_CLUSTERS, s->reftable_size * 8 / s->cs, 4 },
        { QH_INCOMPAT, incompat, 8 }, { QH_COMPAT, compat, 8 }, { QH_AUTOCLEAR, autoclear, 8 },
        { QH_REFCOUNT_ORDER, s->order, 4 }, { QH_HEADER_LENGTH, hl, 4 },
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (f[i].off >= hl) {
            continue;
        }
        if (f[i].w == 4) {
            uint32_t be = htobe32((uint32_t)f[i].v);
            memcpy(buf + f[i].off, &be, 4);
        } else {
            uint64_t be = htobe64(f[i].v);
            memcpy(buf + f[i].off, &be, 8);
        }
    }
    if (o->version == 3) {
        buf[QH_COMPRESSION_TYPE] = (uint8_t)o->compression;
    }
    size_t pos = hl;
    if (o->backing_fmt) {
        pos += header_ext(buf + pos, QCOW2_EXT_BACKING_FORMAT, o->backing_fmt,
                          (uint32_t)strlen(o->backing_fmt));
    }
    if (o->data_file) {
        pos += header_ext(buf + pos, QCOW2_EXT_DATA_FILE, o->data_file,
                          (uint32_t)strlen(o->data_file));
    }
    /* The table is informational; QEMU leaves it out of clusters of 4 KiB
     * and less to keep room for a backing file name. */
    if (o->version == 3 && s->cs > 4096) {
        static const struct { uint8_t type, bit; const char *name; } feats[] = {
            { QCOW2_FEAT_INCOMPAT, 0, "dirty bit" },
            { QCOW2_FEAT_INCOMPAT, 1, "corrupt bit" },
            { QCOW2_FEAT_INCOMPAT, 2, "external data file" },
            { QCOW2_FEAT_INCOMPAT, 3, "compression type" },
            { QCOW2_FEAT_INCOMPAT, 4, "extended L2 entries" },
            { QCOW2_FEAT_COMPAT, 0, "lazy refcounts" },
            { QCOW2_FEAT_AUTOCLEAR, 0, "bitmaps" },
            { QCOW2_FEAT_AUTOCLEAR, 1, "raw external data" },
        };
        uint8_t table[8 * 48] = { 0 };
        for (size_t i = 0; i < 8; i++) {
            table[i * 48] = feats[i].type;
            table[i * 48 + 1] = feats[i].bit;
            memcpy(table + i * 48 + 2, feats[i].name, strlen(feats[i].name));
        }
        pos += header_ext(buf + pos, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    }
    pos += header_ext(buf + pos, QCOW2_EXT_END, NULL, 0);
    if (o->backing_file) {
        size_t len = strlen(o->backing_file);
        if (len > s->cs - pos) {
            error_setg(errp, "qcow2: %s: backing file name of %zu bytes does not fit in the"
                       " header cluster", filename, len);
            return -ENOSPC;
        }
        memcpy(buf + pos, o->backing_file, len);
        uint64_t be64 = htobe64(pos);
        memcpy(buf + QH_BACKING_OFFSET, &be64, 8);
        uint32_t be32 = htobe32((uint32_t)len);
        memcpy(buf + QH_BACKING_SIZE, &be32, 4);
    }
    return 0;
}

/* Options, checked in qemu-img's order with its messages (plus the value). */
static int parse_opts(OptDict *opts, Q2CreateOpts *o, Error **errp)
{
    static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };
    static const char *const compression_names[] = { "zlib", "zstd", NULL };
    char *compat = NULL;
    Error *local = NULL;

    memset(o, 0, sizeof(*o));
    if (optdict_take_size(opts, "size", 0, &o->size, errp) < 0 ||
        optdict_take_size(opts, "cluster_size", 65536, &o->cluster_size, errp) < 0 ||
        optdict_take_bool(opts, "extended_l2", false, &o->extl2, errp) < 0 ||
        optdict_take_bool(opts, "lazy_refcounts", false, &o->lazy, errp) < 0 ||
        optdict_take_bool(opts, "data_file_raw", false, &o->data_file_raw, errp) < 0 ||
        optdict_take_size(opts, "refcount_bits", 16, &o->refcount_bits, errp) < 0) {
        return -EINVAL;
    }
    char *val = NULL;
    optdict_take_str(opts, "preallocation", NULL, &val);
    if (val) {
        optdict_set(opts, "preallocation", val);
    }
    o->prealloc = optdict_take_enum(opts, "preallocation", prealloc_names, 0, &local);
    if (o->prealloc < 0) {
        error_free(local);
        error_setg(errp, "Parameter 'preallocation' does not accept value '%s'", val);
        free(val);
        return -EINVAL;
    }
    free(val);
    val = NULL;
    optdict_take_str(opts, "compression_type", NULL, &val);
    if (val) {
        optdict_set(opts, "compression_type", val);
    }
    o->compression = optdict_take_enum(opts, "compression_type", compression_names, 0, &local);
    if (o->compression < 0) {
        error_free(local);
        error_setg(errp, "Parameter 'compression-type' does not accept value '%s'", val);
        free(val);
        return -EINVAL;
    }
    free(val);
    optdict_take_str(opts, "compat", NULL, &compat);
    optdict_take_str(opts, "backing_file", NULL, &o->backing_file);
    optdict_take_str(opts, "backing_fmt", NULL, &o->backing_fmt);
    optdict_take_str(opts, "data_file", NULL, &o->data_file);
    o->version = 3;
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
            o->version = 2;
        } else if (strcmp(compat, "1.1") && strcmp(compat, "v3")) {
            error_setg(errp, "Parameter 'version' does not accept value '%s'", compat);
            free(compat);
            return -EINVAL;
        }
        free(compat);
    }
    o->size = ALIGN_UP(o->size, (uint64_t)BDRV_SECTOR_SIZE);
    if (o->version < 3 && o->extl2) {
        error_setg(errp, "Extended L2 entries are only supported with compatibility level 1.1"
                   " and above (use version=v3 or greater)");
        return -EINVAL;
    }
    uint64_t cs = o->cluster_size;
    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between 512 and 2048k"
                   " (cluster_size %" PRIu64 ")", cs);
        return -EINVAL;
    }
    if (o->extl2 && cs < 16384) {
        error_setg(errp, "Extended L2 entries are only supported with cluster sizes of at"
                   " least 16384 bytes (cluster_size %" PRIu64 ")", cs);
        return -EINVAL;
    }
    if (o->backing_fmt && !o->backing_file) {
        error_setg(errp, "Backing format cannot be used without backing file");
        return -EINVAL;
    }
    if (o->backing_file && o->prealloc != PREALLOC_MODE_OFF && !o->extl2) {
        error_setg(errp, "Backing file and preallocation can only be used at the same time if"
                   " extended_l2 is on");
        return -EINVAL;
    }
    if (o->version < 3 && o->lazy) {
        error_setg(errp, "Lazy refcounts only supported with compatibility level 1.1 and"
                   " above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (!o->refcount_bits || o->refcount_bits > 64 ||
        (o->refcount_bits & (o->refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not exceed 64 bits"
                   " (refcount_bits %" PRIu64 ")", o->refcount_bits);
        return -EINVAL;
    }
    if (o->version < 3 && o->refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require compatibility level"
                   " 1.1 or above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (o->version < 3 && o->data_file) {
        error_setg(errp, "External data files are only supported with compatibility level 1.1"
                   " and above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (o->data_file_raw && !o->data_file) {
        error_setg(errp, "data-file-raw requires data-file");
        return -EINVAL;
    }
    if (o->data_file_raw && o->backing_file) {
        error_setg(errp, "Backing file and data-file-raw cannot be used at the same time");
        return -EINVAL;
    }
    if (o->data_file_raw && o->prealloc == PREALLOC_MODE_OFF) {
        /* the L2 tables must map the data file one to one */
        o->prealloc = PREALLOC_MODE_METADATA;
    }
    if (o->version < 3 && o->compression != QCOW2_COMPRESSION_ZLIB) {
        error_setg(errp, "Non-zlib compression type is only supported with compatibility"
                   " level 1.1 and above (use version=v3 or greater)");
        return -EINVAL;
    }
#ifndef CONFIG_ZSTD
    if (o->compression == QCOW2_COMPRESSION_ZSTD) {
        error_setg(errp, "Parameter 'compression-type' does not accept value 'zstd'"
                   " (built without zstd)");
        return -ENOTSUP;
    }
#endif
    uint32_t cb = (uint32_t)__builtin_ctzll(cs);
    uint32_t l2_span = cb + cb - (o->extl2 ? 4 : 3);
    uint64_t l1 = (o->size >> l2_span) + ((o->size & ((UINT64_C(1) << l2_span) - 1)) != 0);
    if (l1 > QCOW2_MAX_L1_BYTES / 8) {
        error_setg(errp, "The image size is too large for file format 'qcow2' (try using a"
                   " larger cluster size) (size %" PRIu64 ", cluster_size %" PRIu64 ")",
                   o->size, cs);
        return -EFBIG;
    }
    return 0;
}

static int open_new_file(const char *filename, PreallocMode prealloc, uint64_t size,
                         BdrvChild **child, Error **errp)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    OptDict *fo = optdict_new();
    optdict_set_int(fo, "size", (int64_t)size);
    if (prealloc == PREALLOC_MODE_FALLOC || prealloc == PREALLOC_MODE_FULL) {
        optdict_set(fo, "preallocation", names[prealloc]);
    }
    int ret = bdrv_co_create_file(filename, fo, errp);
    optdict_free(fo);
    if (ret < 0) {
        return ret;
    }
    BlockDriverState *bs = bdrv_open(filename, NULL, BDRV_O_RDWR | BDRV_O_PROTOCOL, errp);
    if (!bs) {
        return -EIO;
    }
    *child = bdrv_root_attach_child(bs, "qcow2-create", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY,
                                    BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                    BLK_PERM_EXCLUSIVE_SHARED, errp);
    return *child ? 0 : -EIO;
}

static void sim_free(Q2Sim *s)
{
    for (size_t i = 0; i < s->nb_rb; i++) {
        free(s->rb_bufs[i]);
    }
    free(s->rb_bufs);
    free(s->rb_offsets);
    free(s->reftable);
    for (uint64_t i = 0; s->l2 && i < s->l1_size; i++) {
        free(s->l2[i]);
    }
    free(s->l2);
    free(s->l1);
}

/* The data file's name as the header records it: as given. */
int coroutine_fn qcow2_co_create(const char *filename, OptDict *opts, Error **errp)
{
    Q2CreateOpts o;
    Q2Sim s = { 0 };
    BdrvChild *data = NULL;
    uint8_t *hdr = NULL;
    uint64_t end = 0;
    int ret = parse_opts(opts, &o, errp);
    if (ret < 0) {
        goto out_opts;
    }
    s.cb = (uint32_t)__builtin_ctzll(o.cluster_size);
    s.cs = o.cluster_size;
    s.order = (uint32_t)__builtin_ctzll(o.refcount_bits);
    s.rb_bits = s.cb + 3 - s.order;
    s.rb_size = UINT64_C(1) << s.rb_bits;
    s.extl2 = o.extl2;
    s.l2_entry_size = o.extl2 ? 16 : 8;
    s.l2_size = s.cs / s.l2_entry_size;
    s.data_file = o.data_file != NULL;

    if (o.data_file) {
        /* The data file holds the guest data at guest offsets. */
        PreallocMode dm = o.prealloc == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : o.prealloc;
        ret = open_new_file(o.data_file, dm, o.size, &data, errp);
        if (ret < 0) {
            goto out_opts;
        }
    }
    ret = open_new_file(filename, PREALLOC_MODE_OFF, 0, &s.file, errp);
    if (ret < 0) {
        goto out;
    }

    /* The minimal image: header, refcount table, one refcount block,
     * clusters 0-2 counted (QEMU allocates them through its allocator,
     * which on an empty refcount block gives exactly these). */
    s.reftable_size = s.cs / 8;
    s.reftable = calloc(s.reftable_size, 8);
    if (!s.reftable || !rb_new(&s, 2 * s.cs)) {
        ret = -ENOMEM;
        goto nomem;
    }
    s.reftable_offset = s.cs;
    s.reftable[0] = 2 * s.cs;
    note_write(&s, 0, 3 * s.cs);
    int64_t first = alloc_clusters(&s, 3 * s.cs);
    if (first != 0) {
        ret = first < 0 ? (int)first : -EIO;
        goto io_fail;
    }
    ret = grow_l1(&s, size_to_l1(&s, o.size));
    if (ret < 0) {
        goto io_fail;
    }
    if (o.prealloc == PREALLOC_MODE_METADATA ||
        (o.data_file && o.prealloc != PREALLOC_MODE_OFF)) {
        ret = preallocate_metadata(&s, o.size, &end);
    } else if (o.prealloc != PREALLOC_MODE_OFF) {
        ret = preallocate_data(&s, o.size, o.prealloc, errp);
        if (ret < 0 && errp && *errp) {
            error_prepend(errp, "qcow2: %s: cannot preallocate: ", filename);
            goto out;
        }
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* The live structures: refcount blocks, tables, header. */
    for (size_t i = 0; i < s.nb_rb; i++) {
        ret = bdrv_pwrite(s.file, (int64_t)s.rb_offsets[i], (int64_t)s.cs, s.rb_bufs[i], 0);
        if (ret < 0) {
            goto io_fail;
        }
    }
    ret = write_table(&s, s.reftable_offset, s.reftable, s.reftable_size, s.reftable_size * 8);
    if (ret == 0 && s.l1_size) {
        ret = write_table(&s, s.l1_offset, s.l1, s.l1_size, s.l1_size * 8);
    }
    if (ret < 0) {
        goto io_fail;
    }
    hdr = calloc(1, s.cs);
    if (!hdr) {
        ret = -ENOMEM;
        goto nomem;
    }
    ret = build_header(&s, &o, o.size, hdr, errp, filename);
    if (ret < 0) {
        goto out;
    }
    ret = bdrv_pwrite(s.file, 0, (int64_t)s.cs, hdr, 0);
    if (ret < 0) {
        goto io_fail;
    }
    if (end > (data ? (uint64_t)bdrv_getlength(data->bs) : s.file_len)) {
        /* metadata preallocation: the file reaches the end of the last cluster */
        ret = bdrv_truncate(data ? data : s.file, (int64_t)end, false,
                            o.prealloc == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : o.prealloc,
                            0, errp);
        if (ret < 0) {
            error_prepend(errp, "qcow2: %s: cannot preallocate: ", filename);
            goto out;
        }
    }
    ret = bdrv_flush(s.file->bs);
    if (ret == 0 && data) {
        ret = bdrv_flush(data->bs);
    }
    if (ret < 0) {
        goto io_fail;
    }
    goto out;

nomem:
    error_setg(errp, "qcow2: %s: out of memory laying out the image", filename);
    goto out;
io_fail:
    if (ret == -EFBIG) {
        error_setg(errp, "qcow2: %s: the image needs more metadata than qcow2 allows"
                   " (size %" PRIu64 ", cluster_size %" PRIu64 ")", filename, o.size, s.cs);
    } else {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot write the image", filename);
    }
out:
    free(hdr);
    sim_free(&s);
    if (s.file) {
        bdrv_unref_child(NULL, s.file);
    }
    if (data) {
        bdrv_unref_child(NULL, data);
    }
out_opts:
    free(o.backing_file);
    free(o.backing_fmt);
    free(o.data_file);
    return ret;
}
