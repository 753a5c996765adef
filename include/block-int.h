/*
 * block-int.h - internals of the block layer's own files (io/block*.c) that
 * drivers do not need: graph construction helpers.  Request tracking, which
 * some drivers do take part in, is in block-req.h (included here).
 */
#ifndef UBLKD_BLOCK_INT_H
#define UBLKD_BLOCK_INT_H

#include "block-driver.h"
#include "block-req.h"

/* ---- graph internals (io/block.c, io/block-open.c) ---- */
/* A new, registered, not yet opened node (refcnt 1); NULL on a bad or
 * duplicate node name. */
BlockDriverState *bdrv_new_node(const BlockDriver *drv, const char *node_name, Error **errp);

/* ---- permission transactions (io/block-perm.c) ----
 * new, then update from each node where something changed (and set_edge
 * for edges whose needs the caller decides: root edges), then finish
 * (check + commit, or abort), or check and then commit or abort. */
typedef struct BdrvPermTx BdrvPermTx;
BdrvPermTx *bdrv_perm_tx_new(void);
void bdrv_perm_tx_set_edge(BdrvPermTx *tx, BdrvChild *c, unsigned perm, unsigned shared);
void bdrv_perm_tx_update(BdrvPermTx *tx, BlockDriverState *bs);
int bdrv_perm_tx_check(BdrvPermTx *tx, Error **errp);
void bdrv_perm_tx_commit(BdrvPermTx *tx);
void bdrv_perm_tx_abort(BdrvPermTx *tx);
int bdrv_perm_tx_finish(BdrvPermTx *tx, Error **errp);
/* Recompute and apply the permissions of bs and everything below it. */
int bdrv_refresh_perms(BlockDriverState *bs, Error **errp);

/* ---- drain bookkeeping of edges (io/block-io-drain.c, for io/block.c) ----
 * An edge passes every drained section of its child on to its parent, and a
 * parent's subtree sections on to its child; these keep that true when an
 * edge appears, goes, or changes its child. */
void bdrv_drain_edge_attached(BdrvChild *c);    /* c linked in c->bs->parents */
void bdrv_drain_edge_detaching(BdrvChild *c);   /* before c leaves c->bs->parents */
/* Move c to new_bs (both drained by the caller). */
void bdrv_drain_edge_replace(BdrvChild *c, BlockDriverState *new_bs);

#endif
