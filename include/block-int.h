/*
 * block-int.h - internals of the block layer's own files (io/block*.c) that
 * drivers do not need: graph construction helpers.  Request tracking, which
 * some drivers do take part in, is in block-req.h (included here).
 */
#ifndef UBLKD_BLOCK_INT_H
#define UBLKD_BLOCK_INT_H

#include "block.h"
#include "block-req.h"

/* ---- graph internals (io/block.c, io/block-open.c) ---- */
/* A new, registered, not yet opened node (refcnt 1); NULL on a bad or
 * duplicate node name. */
BlockDriverState *bdrv_new_node(const BlockDriver *drv, const char *node_name, Error **errp);

#endif
