/*
 * qcow2-create-layout.c - QEMU's allocator, replayed on the in-memory image
 * of qcow2-create.h: first fit from a moving free-cluster index, refcount
 * blocks that describe themselves when they can, a restart of the search
 * after a new refcount block, a new refcount table laid out as
 * qcow2_refcount_area lays it out, L2 tables and preallocated data as
 * preallocate_co and qcow2_co_truncate place them.  Structures freed on the
 * way are written when given up (their bytes stay in the file behind QEMU
 * too); L2 tables are written once full.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include "qcow2-create.h"


void q2sim_note_write(Q2Sim *s, uint64_t off, uint64_t len)
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
uint8_t *q2sim_rb_new(Q2Sim *s, uint64_t offset)
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

static uint64_t get_refcount(Q2Sim *s, uint64_t ci)
{
    uint64_t ti = ci >> s->rb_bits;
    if (ti >= s->reftable_size || !s->reftable[ti]) {
        return 0;
    }
    uint8_t *b = rb_find(s, s->reftable[ti]);
    return b ? qcow2_rc_get(b, ci & (s->rb_size - 1), s->order) : 0;
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
        uint8_t *b = q2sim_rb_new(s, (uint64_t)new_block);
        if (!b) {
            return -ENOMEM;
        }
        qcow2_rc_set(b, ((uint64_t)new_block >> s->cb) & (s->rb_size - 1), s->order, 1);
    } else {
        int ret = update_refcount(s, (uint64_t)new_block, s->cs, false);
        if (ret < 0) {
            return ret;
        }
        if (!q2sim_rb_new(s, (uint64_t)new_block)) {
            return -ENOMEM;
        }
    }
    q2sim_note_write(s, (uint64_t)new_block, s->cs);
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
        uint64_t rc = qcow2_rc_get(block, i, s->order);
        uint64_t max = s->order == 6 ? UINT64_MAX : (UINT64_C(1) << (1U << s->order)) - 1;
        if (decrease ? rc == 0 : rc == max) {
            ret = -EINVAL;
            break;
        }
        rc = decrease ? rc - 1 : rc + 1;
        if (rc == 0 && ci < s->free_cluster_index) {
            s->free_cluster_index = ci;
        }
        qcow2_rc_set(block, i, s->order, rc);
    }
    if (ret < 0) {
        /* undo what was done, as QEMU does */
        update_refcount(s, offset, cluster_offset - offset, !decrease);
    }
    return ret;
}

int64_t q2sim_alloc_clusters(Q2Sim *s, uint64_t size)
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

/* Write a big-endian copy of a host-order u64 table. */
int q2sim_write_table(Q2Sim *s, uint64_t offset, const uint64_t *t, uint64_t n, uint64_t bytes)
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
    q2sim_note_write(s, offset, bytes);
    return ret < 0 ? ret : 0;
}

/* QEMU's qcow2_refcount_area: new refcount blocks and table from
 * start_offset on, covering the image plus additional_clusters. */
static int64_t refcount_area(Q2Sim *s, uint64_t start_offset, uint64_t additional_clusters,
                             bool exact_size, uint64_t new_refblock_index,
                             uint64_t new_refblock_offset)
{
    uint64_t total = qcow2_refblocks_needed(start_offset / s->cs + additional_clusters, s->cs,
                                      s->order, !exact_size, NULL);
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
            b = q2sim_rb_new(s, block_offset);
            t[i] = block_offset;
            q2sim_note_write(s, block_offset, s->cs);
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
                qcow2_rc_set(b, j, s->order, 1);
            }
        }
    }
    int ret = q2sim_write_table(s, table_offset, t, table_size, table_size * 8);
    if (ret < 0) {
        free(t);
        return ret;
    }
    uint64_t old_offset = s->reftable_offset, old_size = s->reftable_size;
    /* the old table's bytes stay in the file */
    ret = q2sim_write_table(s, old_offset, s->reftable, old_size, old_size * 8);
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

uint64_t q2sim_size_to_l1(const Q2Sim *s, uint64_t size)
{
    uint32_t shift = s->cb + (s->cb - (s->extl2 ? 4 : 3));
    return (size + (UINT64_C(1) << shift) - 1) >> shift;
}

/* QEMU's qcow2_grow_l1_table(exact_size) from an empty L1. */
int q2sim_grow_l1(Q2Sim *s, uint64_t new_size)
{
    if (new_size <= s->l1_size) {
        return 0;
    }
    int64_t off = q2sim_alloc_clusters(s, new_size * 8);
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
    return q2sim_write_table(s, s->l1_offset, s->l1, s->l1_size, s->l1_size * 8);
}

/* QEMU's l2_allocate for an empty L1 entry: a zeroed table written at once. */
static int l2_allocate(Q2Sim *s, uint64_t l1_index)
{
    int64_t off = q2sim_alloc_clusters(s, s->cs);
    if (off < 0) {
        return (int)off;
    }
    s->l2[l1_index] = calloc(1, s->cs);
    if (!s->l2[l1_index]) {
        return -ENOMEM;
    }
    q2sim_note_write(s, (uint64_t)off, s->cs);
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
int q2sim_preallocate_metadata(Q2Sim *s, uint64_t size, uint64_t *end)
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
            int64_t off = q2sim_alloc_clusters(s, nb << s->cb);
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
int q2sim_preallocate_data(Q2Sim *s, uint64_t size, PreallocMode mode, Error **errp)
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

void q2sim_free(Q2Sim *s)
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
