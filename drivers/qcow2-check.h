/*
 * qcow2-check.h - the state `img check` on a qcow2 image carries between its
 * steps (qcow2-check.c: walk and compare; qcow2-check-repair.c: what the
 * repairs write).  Only drivers/qcow2-check*.c include this.
 *
 * The in-memory refcount table (rt) has the image's refcount width and the
 * byte layout of refcount blocks, sized in whole clusters, so a rebuild
 * writes slice i of it as refcount block i.
 */
#ifndef UBLKD_DRIVERS_QCOW2_CHECK_H
#define UBLKD_DRIVERS_QCOW2_CHECK_H

#include "qcow2-int.h"

#define QCOW2_L1E_RESERVED_MASK     0x7f000000000001ffULL
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feULL
#define QCOW2_REFT_OFFSET_MASK      0xfffffffffffffe00ULL
#define QCOW2_REFT_RESERVED_MASK    0x1ffULL
#define QCOW2_L2_BITMAP_ALL_ZEROES  (QCOW2_L2_BITMAP_ALL_ALLOC << 32)

/* QEMU's QCow2ClusterType: what a whole L2 entry says. */
typedef enum {
    Q2C_UNALLOCATED, Q2C_ZERO_PLAIN, Q2C_ZERO_ALLOC, Q2C_NORMAL, Q2C_COMPRESSED,
} Qcow2ClusterType;

typedef struct Qcow2CheckSnapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size, extra_data_size;
    char id[128], name[256];        /* for messages only */
} Qcow2CheckSnapshot;

typedef struct Qcow2Check {
    BlockDriverState *bs;
    BdrvCheckResult *res;
    BdrvCheckMode fix;
    uint32_t cluster_size;
    uint8_t *rt;                    /* counted references, refcount-block layout */
    int64_t nb;                     /* clusters rt covers */
    uint64_t *l2;                   /* one L2 table, big-endian, as on disk */
    bool rebuild;                   /* the refcount structures must be rebuilt */
    BdrvCheckResult snap;           /* the snapshot table's findings (QEMU's snapshot_res) */
    Qcow2CheckSnapshot *snapshots;
    uint32_t nb_snapshots;
    uint64_t snapshots_size;
} Qcow2Check;

static inline uint64_t qcow2_refcount_max(const BDRVQcow2State *s)
{
    return s->h.refcount_order == 6 ? UINT64_MAX
                                    : (UINT64_C(1) << (1U << s->h.refcount_order)) - 1;
}

/* Bytes of an in-memory refcount table for n clusters: whole clusters. */
static inline size_t qcow2_imrt_bytes(const BDRVQcow2State *s, int64_t n)
{
    uint64_t bytes = DIV_ROUND_UP((uint64_t)n << s->h.refcount_order, 8);
    return (size_t)ALIGN_UP(MAX(bytes, (uint64_t)1), (uint64_t)s->cluster_size);
}

static inline uint64_t qcow2_check_l2e(const Qcow2Check *c, uint32_t i)
{
    BDRVQcow2State *s = c->bs->opaque;
    return be64toh(c->l2[i * (s->l2_entry_size / 8)]);
}
static inline uint64_t qcow2_check_l2_bitmap(const Qcow2Check *c, uint32_t i)
{
    BDRVQcow2State *s = c->bs->opaque;
    return qcow2_has_subclusters(s) ? be64toh(c->l2[i * 2 + 1]) : 0;
}
static inline void qcow2_check_set_l2e(Qcow2Check *c, uint32_t i, uint64_t e)
{
    BDRVQcow2State *s = c->bs->opaque;
    c->l2[i * (s->l2_entry_size / 8)] = htobe64(e);
}

/* qcow2-check.c */
int qcow2_imrt_grow(Qcow2Check *c, int64_t n);
int coroutine_fn qcow2_check_inc_refcounts(Qcow2Check *c, uint64_t offset, uint64_t size);
Qcow2ClusterType qcow2_check_cluster_type(BDRVQcow2State *s, uint64_t l2e);
int coroutine_fn qcow2_check_read_l2(Qcow2Check *c, uint64_t l2_offset);
int coroutine_fn qcow2_check_calculate(Qcow2Check *c);
void coroutine_fn qcow2_check_compare(Qcow2Check *c, BdrvCheckMode fix, int64_t *highest);

/* qcow2-check-repair.c */
int coroutine_fn qcow2_check_zero_l2_entry(Qcow2Check *c, uint64_t l2_offset, uint32_t i,
                                           bool active, bool *overlap);
int coroutine_fn qcow2_check_grow_file_for_refblock(Qcow2Check *c, uint64_t offset);
int coroutine_fn qcow2_check_set_refcount(Qcow2Check *c, uint64_t cluster, uint64_t value);
int coroutine_fn qcow2_check_write_l1_entry(Qcow2Check *c, uint32_t i, uint64_t e);
int coroutine_fn qcow2_check_write_l2(Qcow2Check *c, uint64_t l2_offset);
int coroutine_fn qcow2_check_rebuild(Qcow2Check *c, int64_t *highest);

#endif
