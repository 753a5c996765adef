/*
 * qcow2-cluster.c - guest offset to host offset: the L1 table (in memory)
 * and L2 slices (in the metadata cache), with extended L2 subclusters.
 *
 * Lookups take no lock: a hit in the L2 cache is a reference count in the
 * calling thread's row, and entries are read with atomic loads.  A lookup
 * answers for a run of subclusters of the same type (contiguous in the
 * host for data) within one L2 slice, so a long read is a few lookups.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include "qcow2-int.h"

/* Corrupt metadata: the request fails with -EIO; the image is marked
 * corrupt if it is writable (qcow2_signal_corruption). */
static void coroutine_fn report_corruption(BlockDriverState *bs, const char *fmt, uint64_t a,
                                           uint64_t b)
{
    char msg[256];
    snprintf(msg, sizeof(msg), fmt, a, b);
    qcow2_signal_corruption(bs, msg);
}

static inline uint64_t l2_entry(const BDRVQcow2State *s, const uint64_t *slice, uint32_t i)
{
    return be64toh(__atomic_load_n(&slice[i * (s->l2_entry_size / 8)], __ATOMIC_ACQUIRE));
}

static inline uint64_t l2_bitmap(const BDRVQcow2State *s, const uint64_t *slice, uint32_t i)
{
    if (!qcow2_has_subclusters(s)) {
        return 0;
    }
    return be64toh(__atomic_load_n(&slice[i * 2 + 1], __ATOMIC_ACQUIRE));
}

/* QEMU's qcow2_get_subcluster_type (via qcow2_get_cluster_type). */
static Qcow2SubclusterType subcluster_type(const BDRVQcow2State *s, uint64_t e, uint64_t bitmap,
                                           uint32_t sc)
{
    bool compressed = e & QCOW2_OFLAG_COMPRESSED;
    bool has_offset = e & QCOW2_L2E_OFFSET_MASK;
    /* Offset 0 is a valid data-file offset: COPIED tells it from "none". */
    bool allocated = has_offset || (qcow2_has_data_file(s) && (e & QCOW2_OFLAG_COPIED));

    if (compressed) {
        return QCOW2_SC_COMPRESSED;
    }
    if (!qcow2_has_subclusters(s)) {
        if (e & QCOW2_OFLAG_ZERO) {
            return has_offset ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        }
        return allocated ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED_PLAIN;
    }
    uint64_t alloc_mask = 1ULL << sc, zero_mask = alloc_mask << 32;
    if (allocated) {
        if ((bitmap >> 32) & bitmap) {
            return QCOW2_SC_INVALID;
        }
        if (bitmap & zero_mask) {
            return QCOW2_SC_ZERO_ALLOC;
        }
        return (bitmap & alloc_mask) ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED_ALLOC;
    }
    if (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC) {
        return QCOW2_SC_INVALID;
    }
    return (bitmap & zero_mask) ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOCATED_PLAIN;
}

static bool type_has_host_offset(Qcow2SubclusterType t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC || t == QCOW2_SC_UNALLOCATED_ALLOC;
}

/* Subclusters from (l2_index, sc_index) on, over at most nb_clusters
 * clusters, of the first one's type (and contiguous host clusters).
 * -EINVAL on an invalid entry. */
static int count_contiguous_subclusters(const BDRVQcow2State *s, const uint64_t *slice,
                                        uint32_t l2_index, uint32_t sc_index,
                                        uint64_t nb_clusters, bool same_copied)
{
    uint64_t e = l2_entry(s, slice, l2_index);
    Qcow2SubclusterType expected = subcluster_type(s, e, l2_bitmap(s, slice, l2_index), sc_index);
    bool check_offset = type_has_host_offset(expected);
    uint64_t expected_offset = e & QCOW2_L2E_OFFSET_MASK;
    int count = 0;

    for (uint64_t i = 0; i < nb_clusters; i++) {
        e = l2_entry(s, slice, l2_index + i);
        uint64_t bitmap = l2_bitmap(s, slice, l2_index + i);
        if (check_offset && expected_offset != (e & QCOW2_L2E_OFFSET_MASK)) {
            break;
        }
        if (same_copied && i &&
            (e & QCOW2_OFLAG_COPIED) != (l2_entry(s, slice, l2_index) & QCOW2_OFLAG_COPIED)) {
            break;
        }
        for (uint32_t j = i == 0 ? sc_index : 0; j < s->subclusters_per_cluster; j++) {
            Qcow2SubclusterType t = subcluster_type(s, e, bitmap, j);
            if (t == QCOW2_SC_INVALID) {
                return -EINVAL;
            }
            if (t != expected) {
                return count;
            }
            count++;
        }
        /* A compressed cluster is one cluster on its own. */
        if (expected == QCOW2_SC_COMPRESSED) {
            break;
        }
        expected_offset += s->cluster_size;
    }
    return count;
}

static int coroutine_fn get_host_offset(BlockDriverState *bs, uint64_t offset, uint64_t *bytes,
                                        uint64_t *host, Qcow2SubclusterType *type,
                                        bool *copied)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t offset_in_cluster = qcow2_offset_into_cluster(s, offset);
    uint64_t l1_index = offset >> (s->l2_bits + s->cluster_bits);
    uint32_t l2_index = (uint32_t)((offset >> s->cluster_bits) & ((1ULL << s->l2_bits) - 1));
    uint32_t in_slice = l2_index & (s->l2_slice_entries - 1);
    uint32_t sc_index = (uint32_t)((offset_in_cluster) >> s->subcluster_bits);
    uint64_t bytes_available = (uint64_t)(s->l2_slice_entries - in_slice) << s->cluster_bits;
    uint64_t bytes_needed = MIN(*bytes + offset_in_cluster, bytes_available);
    uint64_t *slice;
    int ret;

    *host = 0;
    if (copied) {
        *copied = false;
    }
    /* A resize may replace the L1 table meanwhile (qcow2-resize.c): the size
     * is published after the table, and an old table stays readable. */
    if (l1_index >= __atomic_load_n(&s->l1_size, __ATOMIC_ACQUIRE)) {
        *type = QCOW2_SC_UNALLOCATED_PLAIN;
        goto out;
    }
    const uint64_t *l1 = __atomic_load_n(&s->l1_table, __ATOMIC_ACQUIRE);
    uint64_t l2_offset = __atomic_load_n(&l1[l1_index], __ATOMIC_ACQUIRE) &
                         QCOW2_L1E_OFFSET_MASK;
    if (!l2_offset) {
        *type = QCOW2_SC_UNALLOCATED_PLAIN;
        goto out;
    }
    if (qcow2_offset_into_cluster(s, l2_offset)) {
        report_corruption(bs, "L2 table offset %#" PRIx64 " unaligned (L1 index: %#" PRIx64 ")",
                          l2_offset, l1_index);
        return -EIO;
    }
    int64_t slice_offset = (int64_t)(l2_offset + (uint64_t)(l2_index - in_slice) *
                                                 s->l2_entry_size);
    ret = meta_cache_get(s->l2_cache, slice_offset, (void **)&slice);
    if (ret < 0) {
        return ret;
    }
    uint64_t e = l2_entry(s, slice, in_slice);
    *type = subcluster_type(s, e, l2_bitmap(s, slice, in_slice), sc_index);
    if (copied) {
        *copied = e & QCOW2_OFLAG_COPIED;
    }

    switch (*type) {
    case QCOW2_SC_COMPRESSED:
        if (qcow2_has_data_file(s)) {
            report_corruption(bs, "Compressed cluster entry found in image with external data"
                              " file (L2 offset: %#" PRIx64 ", L2 index: %#" PRIx64 ")",
                              l2_offset, l2_index);
            ret = -EIO;
            goto put;
        }
        *host = e;
        break;
    case QCOW2_SC_ZERO_PLAIN:
    case QCOW2_SC_UNALLOCATED_PLAIN:
        break;
    case QCOW2_SC_ZERO_ALLOC:
    case QCOW2_SC_NORMAL:
    case QCOW2_SC_UNALLOCATED_ALLOC: {
        uint64_t host_cluster = e & QCOW2_L2E_OFFSET_MASK;
        *host = host_cluster + offset_in_cluster;
        if (qcow2_offset_into_cluster(s, host_cluster)) {
            report_corruption(bs, "Cluster allocation offset %#" PRIx64 " unaligned"
                              " (L2 offset: %#" PRIx64 ")", host_cluster, l2_offset);
            ret = -EIO;
            goto put;
        }
        if (qcow2_has_data_file(s) && qcow2_data_file_is_raw(s) && *host != offset) {
            report_corruption(bs, "External data file host cluster offset %#" PRIx64
                              " does not match guest cluster offset: %#" PRIx64,
                              host_cluster, offset - offset_in_cluster);
            ret = -EIO;
            goto put;
        }
        break;
    }
    case QCOW2_SC_INVALID:
    default:
        report_corruption(bs, "Invalid cluster entry found (L2 offset: %#" PRIx64
                          ", L2 index: %#" PRIx64 ")", l2_offset, l2_index);
        ret = -EIO;
        goto put;
    }

    uint64_t nb_clusters = DIV_ROUND_UP(bytes_needed, (uint64_t)s->cluster_size);
    ret = count_contiguous_subclusters(s, slice, in_slice, sc_index, nb_clusters, copied != NULL);
    if (ret < 0) {
        report_corruption(bs, "Invalid cluster entry found (L2 offset: %#" PRIx64
                          ", L2 index: %#" PRIx64 ")", l2_offset, l2_index);
        ret = -EIO;
        goto put;
    }
    bytes_available = ((uint64_t)ret + sc_index) << s->subcluster_bits;
    ret = 0;
put:
    meta_cache_put(s->l2_cache, slice);
    if (ret < 0) {
        return ret;
    }
out:
    bytes_needed = MIN(bytes_needed, bytes_available);
    *bytes = bytes_needed - offset_in_cluster;
    return 0;
}

int coroutine_fn qcow2_get_host_offset(BlockDriverState *bs, uint64_t offset, uint64_t *bytes,
                                       uint64_t *host, Qcow2SubclusterType *type)
{
    return get_host_offset(bs, offset, bytes, host, type, NULL);
}

int coroutine_fn qcow2_get_host_offset_copied(BlockDriverState *bs, uint64_t offset,
                                              uint64_t *bytes, uint64_t *host,
                                              Qcow2SubclusterType *type, bool *copied)
{
    return get_host_offset(bs, offset, bytes, host, type, copied);
}
