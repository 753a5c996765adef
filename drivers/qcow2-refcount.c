/*
 * qcow2-refcount.c - reference counts of host clusters: the refcount table
 * (in memory) names refcount blocks (in the metadata cache), each a cluster
 * of 2^refcount_order-bit big-endian counters (sub-byte widths packed from
 * the low bits of each byte, as QEMU does).  Blocks are cached in slices
 * like L2 tables, so a 2 MiB-cluster image does not pin 2 MiB per entry.
 */
#include <errno.h>
#include "qcow2-int.h"

#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ULL

int coroutine_fn qcow2_get_refcount(BlockDriverState *bs, uint64_t cluster_index,
                                    uint64_t *refcount)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t table_index = cluster_index >> s->refcount_block_bits;
    void *block;

    *refcount = 0;
    if (table_index >= s->refcount_table_size) {
        return 0;
    }
    uint64_t rb_offset = __atomic_load_n(&s->refcount_table[table_index], __ATOMIC_ACQUIRE) &
                         QCOW2_REFT_OFFSET_MASK;
    if (!rb_offset) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, rb_offset)) {
        error_report("qcow2: %s: Image is corrupt: refblock offset %#llx unaligned (reftable"
                     " index: %#llx)", qcow2_image_name(bs), (unsigned long long)rb_offset,
                     (unsigned long long)table_index);
        return -EIO;
    }
    /* Blocks are cached in slices (qcow2_refcount_slice_bytes). */
    uint64_t index = cluster_index & ((1ULL << s->refcount_block_bits) - 1);
    uint64_t byte = (index << s->h.refcount_order) / 8;
    uint64_t slice_bytes = meta_cache_entry_size(s->refcount_cache);
    uint64_t slice_start = byte & ~(slice_bytes - 1);
    int ret = meta_cache_get(s->refcount_cache, (int64_t)(rb_offset + slice_start), &block);
    if (ret < 0) {
        return ret;
    }
    *refcount = qcow2_rc_get(block, index - ((slice_start * 8) >> s->h.refcount_order),
                             s->h.refcount_order);
    meta_cache_put(s->refcount_cache, block);
    return 0;
}

/*
 * QEMU's heuristic: when at least about 90% of the clusters that the file
 * takes on disk have a refcount (and the file is not sparse beyond that),
 * the image was preallocated with metadata, and allocated clusters may be
 * holes that read as zeros; block status then asks the file about them.
 */
int coroutine_fn qcow2_detect_metadata_preallocation(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t file_length = bdrv_getlength(bs->file->bs);
    if (file_length < 0) {
        return (int)file_length;
    }
    int64_t real_allocation = bdrv_get_allocated_file_size(bs->file->bs);
    if (real_allocation < 0) {
        return (int)real_allocation;
    }
    int64_t real_clusters = real_allocation / s->cluster_size;
    int64_t threshold = MAX(real_clusters * 10 / 9, real_clusters + 2);
    int64_t end_cluster = DIV_ROUND_UP(file_length, (int64_t)s->cluster_size);
    int64_t count = 0;

    for (int64_t i = 0; i < end_cluster && count < threshold; i++) {
        uint64_t refcount;
        int ret = qcow2_get_refcount(bs, (uint64_t)i, &refcount);
        if (ret < 0) {
            return ret;
        }
        count += !!refcount;
    }
    return count >= threshold;
}
