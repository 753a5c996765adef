/*
 * block-perm.c - permissions on the node graph, as QEMU has them.
 *
 * Each edge states what its parent needs of the child (perm) and what it
 * lets every other user of the child do (shared_perm).  A node's cumulative
 * permissions are the union of its parents' perm and the intersection of
 * their shared_perm; a node that nobody has attached yet is held by whoever
 * opened it, with what its open flags say (read, and write+resize if
 * read-write; sharing only reads unless force-share).  A parent derives
 * what it needs of each child from its own cumulative permissions and the
 * child's role (BlockDriver.child_perm, bdrv_default_child_perm), so a
 * change runs down the graph.
 *
 * Every change is a transaction: the new edge permissions are computed down
 * from where the change happened, each node touched is checked (its parents
 * must not need what another parent does not share; a read-only node gives
 * no write; the driver's check_perm, where the file protocol takes its lock
 * bytes), then committed (set_perm) or, on any refusal, rolled back
 * (abort_perm_update and the old edge values).  Control plane only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-int.h"

static const char *const perm_names[] = { "consistent read", "write", "write unchanged",
                                          "resize" };

/* "write, resize": the names of perm's bits (buf of at least 64 bytes). */
static const char *perm_str(unsigned perm, char *buf, size_t size)
{
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ARRAY_SIZE(perm_names); i++) {
        if (perm & (1u << i)) {
            n += (size_t)snprintf(buf + n, size - MIN(n, size), "%s%s", n ? ", " : "",
                                  perm_names[i]);
        }
    }
    return buf;
}

bool bdrv_node_writable(const BlockDriverState *bs)
{
    return bs->reopen_pending ? (bs->reopen_flags & BDRV_O_RDWR) != 0 : !bs->read_only;
}

/* What the opener of a node nobody uses yet holds. */
static unsigned mode_perm(const BlockDriverState *bs)
{
    return BLK_PERM_CONSISTENT_READ |
           (bdrv_node_writable(bs) ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0);
}

void bdrv_get_cumulative_perm(const BlockDriverState *bs, unsigned *perm, unsigned *shared)
{
    unsigned p = 0, s = BLK_PERM_ALL;
    bool used = false;
    for (const BdrvChild *c = bs->parents; c; c = c->next_parent) {
        if (!c->no_perm) {
            p |= c->perm;
            s &= c->shared_perm;
            used = true;
        }
    }
    if (!used) {
        p = mode_perm(bs);
        s = (bs->open_flags & (BDRV_O_FORCE_SHARE | BDRV_O_SHARE_WRITE)) ? BLK_PERM_ALL
                                                                       : BLK_PERM_EXCLUSIVE_SHARED;
    }
    *perm = p;
    *shared = s;
}

void bdrv_default_child_perm(BlockDriverState *bs, BdrvChild *c, BdrvChildRole role,
                             unsigned perm, unsigned shared, unsigned *nperm, unsigned *nshared)
{
    (void)c;
    /* A filtered child is the parent's data: the parent's users' needs and
     * sharing pass straight through. */
    unsigned p = perm & BLK_PERM_ALL, s = shared & BLK_PERM_ALL;
    if (role & BDRV_CHILD_COW) {
        /* Only read from; others may change it only if the parent's users
         * can live with the data changing under them. */
        p &= BLK_PERM_CONSISTENT_READ;
        s = ((s & BLK_PERM_WRITE) ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0) |
            BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
    } else if (!(role & BDRV_CHILD_FILTERED)) {
        if (role & BDRV_CHILD_METADATA) {
            /* The format writes its metadata even when its users do not,
             * and nobody else may change it under the format. */
            if (bdrv_node_writable(bs)) {
                p |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
            }
            p |= BLK_PERM_CONSISTENT_READ;
            s &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
        }
        if (role & BDRV_CHILD_DATA) {
            /* The format assumes the size it knows; writes may grow it. */
            s &= ~BLK_PERM_RESIZE;
            if (p & BLK_PERM_WRITE_UNCHANGED) {
                p |= BLK_PERM_WRITE;
            }
            if (p & BLK_PERM_WRITE) {
                p |= BLK_PERM_RESIZE;
            }
        }
    }
    *nperm = p;
    *nshared = s;
}

/* What parent needs of its child c now. */
static void child_perm(BlockDriverState *parent, BdrvChild *c, unsigned *perm, unsigned *shared)
{
    unsigned pp, ps;
    bdrv_get_cumulative_perm(parent, &pp, &ps);
    if (parent->drv && parent->drv->child_perm) {
        parent->drv->child_perm(parent, c, c->role, pp, ps, perm, shared);
    } else {
        bdrv_default_child_perm(parent, c, c->role, pp, ps, perm, shared);
    }
}

/* ---- transactions ---- */

typedef struct PermEdge {
    BdrvChild *c;
    unsigned perm, shared;   /* before the transaction */
} PermEdge;

typedef struct PermNode {
    BlockDriverState *bs;
    bool checked;            /* check_perm succeeded: set_perm or abort owed */
} PermNode;

struct BdrvPermTx {
    PermEdge *edges;
    int n_edges, alloc_edges;
    PermNode *nodes;
    int n_nodes, alloc_nodes;
    bool oom;
};

static void *grow(void *p, int *alloc, size_t elem)
{
    int n = *alloc ? *alloc * 2 : 8;
    void *q = realloc(p, (size_t)n * elem);
    if (q) {
        *alloc = n;
    }
    return q;
}

BdrvPermTx *bdrv_perm_tx_new(void)
{
    BdrvPermTx *tx = calloc(1, sizeof(*tx));
    if (!tx) {
        abort();   /* control plane, a few bytes */
    }
    return tx;
}

static void tx_add_node(BdrvPermTx *tx, BlockDriverState *bs)
{
    for (int i = 0; i < tx->n_nodes; i++) {
        if (tx->nodes[i].bs == bs) {
            return;
        }
    }
    if (tx->n_nodes == tx->alloc_nodes) {
        PermNode *n = grow(tx->nodes, &tx->alloc_nodes, sizeof(*n));
        if (!n) {
            tx->oom = true;
            return;
        }
        tx->nodes = n;
    }
    tx->nodes[tx->n_nodes++] = (PermNode){ .bs = bs };
}

void bdrv_perm_tx_set_edge(BdrvPermTx *tx, BdrvChild *c, unsigned perm, unsigned shared)
{
    if (c->perm == perm && c->shared_perm == shared) {
        return;
    }
    bool recorded = false;
    for (int i = 0; i < tx->n_edges && !recorded; i++) {
        recorded = tx->edges[i].c == c;
    }
    if (!recorded) {
        if (tx->n_edges == tx->alloc_edges) {
            PermEdge *e = grow(tx->edges, &tx->alloc_edges, sizeof(*e));
            if (!e) {
                tx->oom = true;
                return;
            }
            tx->edges = e;
        }
        tx->edges[tx->n_edges++] = (PermEdge){ c, c->perm, c->shared_perm };
    }
    c->perm = perm;
    c->shared_perm = shared;
}

/* Recompute the edges below bs from its cumulative permissions, and on
 * down where they change; every node reached is checked later. */
void bdrv_perm_tx_update(BdrvPermTx *tx, BlockDriverState *bs)
{
    tx_add_node(tx, bs);
    for (BdrvChild *c = bs->children; c; c = c->next) {
        unsigned perm, shared;
        child_perm(bs, c, &perm, &shared);
        if (perm != c->perm || shared != c->shared_perm) {
            bdrv_perm_tx_set_edge(tx, c, perm, shared);
            bdrv_perm_tx_update(tx, c->bs);
        } else {
            tx_add_node(tx, c->bs);   /* a reopen needs its drivers told anyway */
        }
    }
}

static void describe_user(const BdrvChild *c, char *buf, size_t size)
{
    if (c->parent) {
        snprintf(buf, size, "node '%s'", c->parent->node_name);
    } else {
        snprintf(buf, size, "a block device user");
    }
}

static int check_node(BlockDriverState *bs, Error **errp)
{
    char names[64], user[64];
    for (const BdrvChild *a = bs->parents; a; a = a->next_parent) {
        for (const BdrvChild *b = bs->parents; b; b = b->next_parent) {
            unsigned clash = a != b && !a->no_perm && !b->no_perm ? a->perm & ~b->shared_perm : 0;
            if (clash) {
                describe_user(b, user, sizeof(user));
                error_setg(errp, "Conflicts with use by %s as '%s', which does not allow '%s' "
                           "on node '%s'", user, b->name, perm_str(clash, names, sizeof(names)),
                           bs->node_name);
                return -EPERM;
            }
        }
    }
    unsigned perm, shared;
    bdrv_get_cumulative_perm(bs, &perm, &shared);
    if ((perm & BLK_PERM_WRITE) && !bdrv_node_writable(bs)) {
        for (const BdrvChild *a = bs->parents; a; a = a->next_parent) {
            if (!a->no_perm && (a->perm & BLK_PERM_WRITE)) {
                describe_user(a, user, sizeof(user));
                error_setg(errp, "Node '%s'%s%s%s is read-only, but %s needs to write to it "
                           "as '%s'", bs->node_name, bs->filename[0] ? " ('" : "",
                           bs->filename, bs->filename[0] ? "')" : "", user, a->name);
                return -EPERM;
            }
        }
    }
    if (bs->opened && bs->drv && bs->drv->check_perm) {
        return bs->drv->check_perm(bs, perm, shared, errp);
    }
    return 0;
}

void bdrv_perm_tx_abort(BdrvPermTx *tx)
{
    for (int i = tx->n_nodes; i-- > 0;) {
        BlockDriverState *bs = tx->nodes[i].bs;
        if (tx->nodes[i].checked && bs->drv->abort_perm_update) {
            bs->drv->abort_perm_update(bs);
        }
    }
    for (int i = tx->n_edges; i-- > 0;) {
        tx->edges[i].c->perm = tx->edges[i].perm;
        tx->edges[i].c->shared_perm = tx->edges[i].shared;
    }
    free(tx->edges);
    free(tx->nodes);
    free(tx);
}

int bdrv_perm_tx_check(BdrvPermTx *tx, Error **errp)
{
    if (tx->oom) {
        error_setg(errp, "Cannot update the permissions of the block graph: out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < tx->n_nodes; i++) {
        int ret = check_node(tx->nodes[i].bs, errp);
        if (ret < 0) {
            return ret;
        }
        tx->nodes[i].checked = true;
    }
    return 0;
}

void bdrv_perm_tx_commit(BdrvPermTx *tx)
{
    for (int i = 0; i < tx->n_nodes; i++) {
        BlockDriverState *bs = tx->nodes[i].bs;
        if (tx->nodes[i].checked && bs->opened && bs->drv->set_perm) {
            unsigned perm, shared;
            bdrv_get_cumulative_perm(bs, &perm, &shared);
            bs->drv->set_perm(bs, perm, shared);
        }
    }
    free(tx->edges);
    free(tx->nodes);
    free(tx);
}

int bdrv_perm_tx_finish(BdrvPermTx *tx, Error **errp)
{
    int ret = bdrv_perm_tx_check(tx, errp);
    if (ret < 0) {
        bdrv_perm_tx_abort(tx);
        return ret;
    }
    bdrv_perm_tx_commit(tx);
    return 0;
}

int bdrv_refresh_perms(BlockDriverState *bs, Error **errp)
{
    BdrvPermTx *tx = bdrv_perm_tx_new();
    bdrv_perm_tx_update(tx, bs);
    return bdrv_perm_tx_finish(tx, errp);
}
