/*
 * block-snapshot.c - internal snapshots through the format driver
 * (include/block-snapshot.h): each operation runs in a coroutine on the
 * caller's thread with bs drained, as bdrv_make_empty does.
 */
#include <errno.h>
#include <stdlib.h>
#include "aio.h"
#include "block-driver.h"
#include "block-snapshot.h"

int bdrv_snapshot_list(BlockDriverState *bs, BdrvSnapshotInfo **list)
{
    *list = NULL;
    if (!bs->drv || !bs->drv->snapshot_list) {
        return -ENOTSUP;
    }
    return bs->drv->snapshot_list(bs, list);
}

typedef struct SnapCo {
    BlockDriverState *bs;
    BdrvSnapshotInfo *sn;
    const char *id, *name;
    Error **errp;
    int op, ret;
} SnapCo;

enum { SNAP_CREATE, SNAP_GOTO, SNAP_DELETE };

static void coroutine_fn snap_entry(void *opaque)
{
    SnapCo *c = opaque;
    const BlockDriver *drv = c->bs->drv;

    switch (c->op) {
    case SNAP_CREATE: c->ret = drv->co_snapshot_create(c->bs, c->sn, c->errp); break;
    case SNAP_GOTO: c->ret = drv->co_snapshot_goto(c->bs, c->name, c->errp); break;
    default: c->ret = drv->co_snapshot_delete(c->bs, c->id, c->name, c->errp); break;
    }
}

static int snap_run(SnapCo *c, bool supported)
{
    if (!supported) {
        /* QEMU's words for apply; create reports only the errno */
        error_setg(c->errp, "Block driver does not support snapshots");
        return -ENOTSUP;
    }
    bdrv_drained_begin(c->bs);
    aio_co_run_sync(snap_entry, c);
    bdrv_drained_end(c->bs);
    return c->ret;
}

int bdrv_snapshot_create(BlockDriverState *bs, BdrvSnapshotInfo *sn, Error **errp)
{
    SnapCo c = { .bs = bs, .sn = sn, .errp = errp, .op = SNAP_CREATE };
    return snap_run(&c, bs->drv && bs->drv->co_snapshot_create);
}

int coroutine_fn bdrv_co_snapshot_create(BlockDriverState *bs, BdrvSnapshotInfo *sn,
                                         Error **errp)
{
    if (!bs->drv || !bs->drv->co_snapshot_create) {
        error_setg(errp, "Block format '%s' does not support internal snapshots",
                   bs->drv ? bs->drv->format_name : "?");
        return -ENOTSUP;
    }
    return bs->drv->co_snapshot_create(bs, sn, errp);
}

int bdrv_snapshot_goto(BlockDriverState *bs, const char *id_or_name, Error **errp)
{
    SnapCo c = { .bs = bs, .name = id_or_name, .errp = errp, .op = SNAP_GOTO };
    return snap_run(&c, bs->drv && bs->drv->co_snapshot_goto);
}

int bdrv_snapshot_delete(BlockDriverState *bs, const char *id, const char *name, Error **errp)
{
    SnapCo c = { .bs = bs, .id = id, .name = name, .errp = errp, .op = SNAP_DELETE };
    return snap_run(&c, bs->drv && bs->drv->co_snapshot_delete);
}
