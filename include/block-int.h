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

/* ---- drain bookkeeping of edges (io/block-io-drain.c, for io/block.c) ----
 * An edge passes every drained section of its child on to its parent, and a
 * parent's subtree sections on to its child; these keep that true when an
 * edge appears, goes, or changes its child. */
void bdrv_drain_edge_attached(BdrvChild *c);    /* c linked in c->bs->parents */
void bdrv_drain_edge_detaching(BdrvChild *c);   /* before c leaves c->bs->parents */
/* Move c to new_bs (both drained by the caller). */
void bdrv_drain_edge_replace(BdrvChild *c, BlockDriverState *new_bs);

#endif
