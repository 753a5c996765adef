/*
 * block-snapshot.h - internal snapshots of an image (qcow2's), as QEMU's
 * block/snapshot.h: list, create, apply, delete.  A format that keeps none
 * answers -ENOTSUP.  Reading a snapshot is an open option of the format
 * (qcow2: load-snapshot-id / load-snapshot-name, read-only).
 */
#ifndef UBLKD_BLOCK_SNAPSHOT_H
#define UBLKD_BLOCK_SNAPSHOT_H
#include <stdint.h>
#include "block.h"

/* QEMU's QEMUSnapshotInfo: longer names are cut, as qemu-img does. */
typedef struct BdrvSnapshotInfo {
    char id_str[128];
    char name[256];
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;             /* -1: none recorded */
    uint64_t disk_size;          /* the guest size when it was taken (list only) */
} BdrvSnapshotInfo;

/* The snapshots (*list malloc'd, freed by the caller; NULL when none): their
 * count, or -errno (-ENOTSUP: the format has none). */
int bdrv_snapshot_list(BlockDriverState *bs, BdrvSnapshotInfo **list);
/* bs drained around each; -errno with errp set. */
int bdrv_snapshot_create(BlockDriverState *bs, BdrvSnapshotInfo *sn, Error **errp);
int bdrv_snapshot_goto(BlockDriverState *bs, const char *id_or_name, Error **errp);
int bdrv_snapshot_delete(BlockDriverState *bs, const char *id, const char *name, Error **errp);
/* The same, from a coroutine on bs's thread (the caller drains). */
int coroutine_fn bdrv_co_snapshot_create(BlockDriverState *bs, BdrvSnapshotInfo *sn,
                                         Error **errp);
#endif
