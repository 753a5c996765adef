/*
 * block.c - the node graph: driver registry, node lifetime (refcounts, close
 * order), child edges, limits merging, and the simple node queries (length,
 * info, filters, graph description).  Opening, probing and creating images
 * live in block-open.c.  Everything here is control plane: it may allocate
 * and take the graph mutex, and never runs per request.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "aio.h"
#include "block-int.h"

/* ---- driver registry ---- */

#define X(name) extern const BlockDriver bdrv_##name;
BLOCK_DRIVER_LIST(X)
#undef X

static const BlockDriver *const builtin_drivers[] = {
#define X(name) &bdrv_##name,
    BLOCK_DRIVER_LIST(X)
#undef X
};

#define MAX_EXTRA_DRIVERS 128
static const BlockDriver *extra_drivers[MAX_EXTRA_DRIVERS];
static int n_extra_drivers;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

void bdrv_register(const BlockDriver *drv)
{
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < n_extra_drivers; i++) {
        if (extra_drivers[i] == drv) {
            pthread_mutex_unlock(&registry_lock);
            return;
        }
    }
    if (n_extra_drivers == MAX_EXTRA_DRIVERS) {
        abort();   /* only tests register at run time; 128 is plenty */
    }
    extra_drivers[n_extra_drivers++] = drv;
    pthread_mutex_unlock(&registry_lock);
}

const BlockDriver *bdrv_driver_at(int i)
{
    int nb = (int)ARRAY_SIZE(builtin_drivers);
    if (i < 0) {
        return NULL;
    }
    if (i < nb) {
        return builtin_drivers[i];
    }
    pthread_mutex_lock(&registry_lock);
    const BlockDriver *drv = i - nb < n_extra_drivers ? extra_drivers[i - nb] : NULL;
    pthread_mutex_unlock(&registry_lock);
    return drv;
}

const BlockDriver *bdrv_find_format(const char *name)
{
    const BlockDriver *drv;
    for (int i = 0; (drv = bdrv_driver_at(i)); i++) {
        if (!strcmp(drv->format_name, name)) {
            return drv;
        }
    }
    return NULL;
}

const BlockDriver *bdrv_find_protocol(const char *filename, Error **errp)
{
    const char *colon = filename ? strchr(filename, ':') : NULL;
    const char *slash = filename ? strchr(filename, '/') : NULL;
    if (colon && (!slash || colon < slash)) {
        size_t n = (size_t)(colon - filename);
        const BlockDriver *drv;
        for (int i = 0; (drv = bdrv_driver_at(i)); i++) {
            for (size_t k = 0; k < ARRAY_SIZE(drv->protocol_names) && drv->protocol_names[k]; k++) {
                const char *p = drv->protocol_names[k];
                if (strlen(p) == n && !strncmp(p, filename, n)) {
                    return drv;
                }
            }
        }
        /* "a:b.img" stays a file name, as it always was; "x://" is a URL. */
        if (!strncmp(colon, "://", 3)) {
            error_setg(errp, "Unknown protocol '%.*s' in '%s'", (int)MIN(n, (size_t)64),
                       filename, filename);
            return NULL;
        }
    }
    const BlockDriver *file = bdrv_find_format("file");
    if (!file) {
        error_setg(errp, "No protocol driver for '%s'", filename ? filename : "");
    }
    return file;
}

bool bdrv_is_protocol_filename(const char *filename)
{
    const BlockDriver *drv = bdrv_find_protocol(filename, NULL);
    return drv && strcmp(drv->format_name, "file");
}

const BlockDriver *bdrv_probe_buf(const uint8_t *buf, int buf_size, const char *filename)
{
    const BlockDriver *drv, *best = NULL;
    int best_score = 0;
    for (int i = 0; (drv = bdrv_driver_at(i)); i++) {
        if (drv->probe) {
            int score = drv->probe(buf, buf_size, filename);
            if (score > best_score) {
                best_score = score;
                best = drv;
            }
        }
    }
    return best;
}

/* ---- node list (for node-name references) ---- */

static pthread_mutex_t graph_lock = PTHREAD_MUTEX_INITIALIZER;
static BlockDriverState **all_nodes;
static size_t n_nodes, alloc_nodes;
static unsigned next_auto_name;

BlockDriverState *bdrv_find_node(const char *node_name)
{
    BlockDriverState *found = NULL;
    pthread_mutex_lock(&graph_lock);
    for (size_t i = 0; i < n_nodes; i++) {
        if (all_nodes[i]->node_name && !strcmp(all_nodes[i]->node_name, node_name)) {
            found = all_nodes[i];
            break;
        }
    }
    pthread_mutex_unlock(&graph_lock);
    return found;
}

/* QEMU's rule: a letter first, then letters, digits, '-', '.', '_'; < 32 chars. */
static bool node_name_is_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 31 ||
        !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'))) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_')) {
            return false;
        }
    }
    return true;
}

static void node_list_remove(BlockDriverState *bs)
{
    pthread_mutex_lock(&graph_lock);
    for (size_t i = 0; i < n_nodes; i++) {
        if (all_nodes[i] == bs) {
            all_nodes[i] = all_nodes[--n_nodes];
            break;
        }
    }
    pthread_mutex_unlock(&graph_lock);
}

/* ---- node lifetime ---- */

/*
 * A new node with driver state allocated and request tracking initialised,
 * registered under node_name (or an automatic "#blockN").  Not opened yet.
 */
BlockDriverState *bdrv_new_node(const BlockDriver *drv, const char *node_name, Error **errp)
{
    if (node_name && !node_name_is_valid(node_name)) {
        error_setg(errp, "Invalid node-name '%s': it must start with a letter and contain "
                   "only letters, digits, '-', '.' and '_' (at most 31 characters)", node_name);
        return NULL;
    }
    /* Opening reads through the request path, so the opening thread needs
     * a context anyway; it becomes the node's home. */
    AioContext *home = aio_main_init(errp);
    if (!home) {
        return NULL;
    }
    /* Cache-line aligned: the per-thread counter slots must not share lines. */
    BlockDriverState *bs = aligned_alloc(CACHE_LINE, ALIGN_UP(sizeof(*bs), CACHE_LINE));
    if (!bs) {
        abort();
    }
    memset(bs, 0, sizeof(*bs));
    bs->drv = drv;
    bs->home_ctx = home;
    if (drv->instance_size) {
        bs->opaque = calloc(1, drv->instance_size);
        if (!bs->opaque) {
            abort();
        }
    }
    bs->refcnt = 1;
    bs->bl.request_alignment = 1;
    bs->supported_write_flags = drv->supported_write_flags;
    bs->supported_zero_flags = drv->supported_zero_flags;
    pthread_mutex_init(&bs->reqs_lock, NULL);
    co_queue_init(&bs->untracked_queue);
    pthread_mutex_init(&bs->flush_mutex, NULL);
    co_queue_init(&bs->flush_queue);

    pthread_mutex_lock(&graph_lock);
    if (node_name) {
        for (size_t i = 0; i < n_nodes; i++) {
            if (all_nodes[i]->node_name && !strcmp(all_nodes[i]->node_name, node_name)) {
                pthread_mutex_unlock(&graph_lock);
                error_setg(errp, "Duplicate nodes with node-name='%s'", node_name);
                pthread_mutex_destroy(&bs->flush_mutex);
                pthread_mutex_destroy(&bs->reqs_lock);
                free(bs->opaque);
                free(bs);
                return NULL;
            }
        }
        bs->node_name = strdup(node_name);
    } else if (asprintf(&bs->node_name, "#block%u", next_auto_name++) < 0) {
        abort();
    }
    if (n_nodes == alloc_nodes) {
        alloc_nodes = alloc_nodes ? alloc_nodes * 2 : 16;
        all_nodes = realloc(all_nodes, alloc_nodes * sizeof(*all_nodes));
        if (!all_nodes) {
            abort();
        }
    }
    all_nodes[n_nodes++] = bs;
    pthread_mutex_unlock(&graph_lock);
    return bs;
}

/* Close a node whose last reference went away: parent first, then children. */
static void bdrv_delete(BlockDriverState *bs)
{
    if (bs->opened) {
        /* Drivers with caches write them back in close; make the data they
         * wrote before (and the caller's) durable first, as QEMU does. */
        if (!bs->read_only && aio_current() && !(bs->open_flags & BDRV_O_NO_FLUSH)) {
            bdrv_flush(bs);
        }
        if (bs->drv->close) {
            bs->drv->close(bs);
        }
    }
    /* Children go in reverse attach order: backing before file. */
    while (bs->children) {
        BdrvChild *last = bs->children;
        while (last->next) {
            last = last->next;
        }
        bdrv_unref_child(bs, last);
    }
    node_list_remove(bs);
    optdict_free(bs->own_options);
    pthread_mutex_destroy(&bs->flush_mutex);
    pthread_mutex_destroy(&bs->reqs_lock);
    free(bs->node_name);
    free(bs->opaque);
    free(bs);
}

void bdrv_ref(BlockDriverState *bs)
{
    __atomic_add_fetch(&bs->refcnt, 1, __ATOMIC_RELAXED);
}

void bdrv_unref(BlockDriverState *bs)
{
    if (bs && __atomic_sub_fetch(&bs->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        bdrv_delete(bs);
    }
}

/* ---- child edges ---- */

static void unlink_edge(BlockDriverState *parent, BdrvChild *child);

static BdrvChild *attach_child(BlockDriverState *parent, BlockDriverState *child_bs,
                               const char *name, BdrvChildRole role, bool root_perm_given,
                               unsigned perm, unsigned shared, Error **errp)
{
    if (parent && bdrv_find_child(parent, name)) {
        error_setg(errp, "Node '%s' already has a child named '%s'", parent->node_name, name);
        bdrv_unref(child_bs);
        return NULL;
    }
    BdrvChild *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->bs = child_bs;
    c->parent = parent;
    c->name = strdup(name);
    c->role = role;
    c->index = -1;
    co_queue_init(&c->drain_queue);
    if (!strncmp(name, "children.", 9) && name[9] >= '0' && name[9] <= '9') {
        c->index = atoi(name + 9);
    }
    if (parent) {
        BdrvChild **tail = &parent->children;
        while (*tail) {
            tail = &(*tail)->next;
        }
        *tail = c;
        if ((role & BDRV_CHILD_PRIMARY) && !parent->file) {
            parent->file = c;
        } else if ((role & BDRV_CHILD_COW) && !parent->backing) {
            parent->backing = c;
        }
    }
    c->next_parent = child_bs->parents;
    child_bs->parents = c;

    /* What the new edge needs, and whether the child (and what is below
     * it) can give it: refused as a whole if not. */
    BdrvPermTx *tx = bdrv_perm_tx_new();
    if (parent) {
        unsigned pp, ps;
        bdrv_get_cumulative_perm(parent, &pp, &ps);
        if (parent->drv && parent->drv->child_perm) {
            parent->drv->child_perm(parent, c, role, pp, ps, &perm, &shared);
        } else {
            bdrv_default_child_perm(parent, c, role, pp, ps, &perm, &shared);
        }
    } else if (!root_perm_given) {
        c->no_perm = true;
        perm = 0;
        shared = BLK_PERM_ALL;
    }
    bdrv_perm_tx_set_edge(tx, c, perm, shared);
    bdrv_perm_tx_update(tx, child_bs);
    if (bdrv_perm_tx_finish(tx, errp) < 0) {
        unlink_edge(parent, c);
        free(c->name);
        free(c);
        bdrv_unref(child_bs);
        return NULL;
    }
    bdrv_drain_edge_attached(c);
    return c;
}

BdrvChild *bdrv_attach_child(BlockDriverState *parent, BlockDriverState *child_bs,
                             const char *name, BdrvChildRole role, Error **errp)
{
    return attach_child(parent, child_bs, name, role, false, 0, 0, errp);
}

BdrvChild *bdrv_root_attach_child(BlockDriverState *bs, const char *name, BdrvChildRole role,
                                  unsigned perm, unsigned shared, Error **errp)
{
    return attach_child(NULL, bs, name, role, true, perm, shared, errp);
}

static void unlink_edge(BlockDriverState *parent, BdrvChild *child)
{
    for (BdrvChild **p = &child->bs->parents; *p; p = &(*p)->next_parent) {
        if (*p == child) {
            *p = child->next_parent;
            break;
        }
    }
    if (parent) {
        for (BdrvChild **p = &parent->children; *p; p = &(*p)->next) {
            if (*p == child) {
                *p = child->next;
                break;
            }
        }
        if (parent->file == child) {
            parent->file = NULL;
        }
        if (parent->backing == child) {
            parent->backing = NULL;
        }
    }
}

void bdrv_unref_child(BlockDriverState *parent, BdrvChild *child)
{
    if (!child) {
        return;
    }
    bdrv_drain_edge_detaching(child);
    unlink_edge(parent, child);
    BlockDriverState *bs = child->bs;
    /* What the edge needed is free again (lock bytes go), unless the node
     * goes away with this reference anyway.  When its last user goes the
     * node is its opener's again, which may need more than that user did
     * (write on a read-write node); if someone else took it meanwhile, the
     * node keeps what it held and says so. */
    if (__atomic_load_n(&bs->refcnt, __ATOMIC_ACQUIRE) > 1) {
        Error *local = NULL;
        if (bdrv_refresh_perms(bs, &local) < 0) {
            warn_report("%s", error_get_pretty(local));
            error_free(local);
        }
    }
    free(child->name);
    free(child);
    bdrv_unref(bs);
}

BdrvChild *bdrv_find_child(BlockDriverState *bs, const char *name)
{
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

/* ---- changing the graph ---- */

/* Whether target is bs or below it. */
static bool bdrv_is_below(BlockDriverState *bs, BlockDriverState *target)
{
    if (bs == target) {
        return true;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (bdrv_is_below(c->bs, target)) {
            return true;
        }
    }
    return false;
}

/* Limits merge upward and a size may follow the child (raw over a file):
 * recompute them for bs and every node above it. */
static void refresh_upward(BlockDriverState *bs)
{
    bdrv_refresh_limits(bs, NULL);
    if (bs->drv && bs->drv->getlength) {
        bdrv_getlength(bs);
    }
    for (BdrvChild *c = bs->parents; c; c = c->next_parent) {
        if (c->parent) {
            refresh_upward(c->parent);
        }
    }
}

void bdrv_refresh_limits_upward(BlockDriverState *bs)
{
    refresh_upward(bs);
}

static bool edge_writes(const BdrvChild *c)
{
    return c->parent && (c->perm & BLK_PERM_WRITE);
}

int bdrv_replace_child_bs(BdrvChild *child, BlockDriverState *new_bs, Error **errp)
{
    BlockDriverState *parent = child->parent, *old_bs = child->bs;
    if (!parent) {
        error_setg(errp, "Cannot replace the node of a root edge ('%s'): its user does that",
                   child->name);
        return -EINVAL;
    }
    if (new_bs == old_bs) {
        return 0;
    }
    if (bdrv_is_below(new_bs, parent)) {
        error_setg(errp, "Cannot make '%s' child '%s' of '%s': it would be its own child",
                   new_bs->node_name, child->name, parent->node_name);
        return -EINVAL;
    }
    if (edge_writes(child) && (new_bs->read_only || !(new_bs->open_flags & BDRV_O_RDWR))) {
        error_setg(errp, "Cannot make read-only node '%s' child '%s' of '%s', which writes to it",
                   new_bs->node_name, child->name, parent->node_name);
        return -EPERM;
    }
    bdrv_ref(new_bs);
    bdrv_drained_begin(old_bs);
    bdrv_drained_begin(new_bs);
    bdrv_drain_edge_replace(child, new_bs);
    /* The edge's needs move with it: new_bs must grant them, old_bs's go. */
    BdrvPermTx *tx = bdrv_perm_tx_new();
    bdrv_perm_tx_update(tx, new_bs);
    bdrv_perm_tx_update(tx, old_bs);
    int ret = bdrv_perm_tx_finish(tx, errp);
    if (ret < 0) {
        bdrv_drain_edge_replace(child, old_bs);
        bdrv_drained_end(new_bs);
        bdrv_drained_end(old_bs);
        bdrv_unref(new_bs);
        return ret;
    }
    if (child == parent->backing) {
        snprintf(parent->backing_file, sizeof(parent->backing_file), "%s", new_bs->filename);
        snprintf(parent->backing_format, sizeof(parent->backing_format), "%s",
                 new_bs->drv ? new_bs->drv->format_name : "");
    }
    refresh_upward(parent);
    bdrv_drained_end(new_bs);
    bdrv_drained_end(old_bs);
    bdrv_unref(old_bs);
    return 0;
}

/* ---- numbered children of a live graph ---- */

static bool graph_has_thread_state(BlockDriverState *bs)
{
    if (bs->drv->attach_thread || bs->drv->detach_thread) {
        return true;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (graph_has_thread_state(c->bs)) {
            return true;
        }
    }
    return false;
}

int bdrv_change_child_bs(BlockDriverState *bs, BdrvChildChange op, int index,
                         BlockDriverState *new_bs, Error **errp)
{
    if (!bs->drv->change_child) {
        error_setg(errp, "Node '%s' (%s) cannot change its children while in use",
                   bs->node_name, bs->drv->format_name);
        return -ENOTSUP;
    }
    /* Threads attach to a graph once, when they start (bdrv_attach_thread);
     * a node that joins later is never attached by the queue threads that
     * already serve.  No driver keeps per-thread state today (the file
     * protocol submits on the calling thread's ring, whatever the thread),
     * so this refuses nothing yet; it keeps a future one from being half
     * set up. */
    if (new_bs && graph_has_thread_state(new_bs)) {
        error_setg(errp, "Node '%s' keeps per-thread state, which the threads already serving "
                   "'%s' cannot set up: it cannot join a graph in use", new_bs->node_name,
                   bs->node_name);
        return -ENOTSUP;
    }
    return bs->drv->change_child(bs, op, index, new_bs, errp);
}

int bdrv_numbered_children(BlockDriverState *bs)
{
    int n = 0;
    for (BdrvChild *c = bs->children; c; c = c->next) {
        n += c->index >= 0;
    }
    return n;
}

int bdrv_change_child(BlockDriverState *bs, BdrvChildChange op, int index, OptDict *options,
                      Error **errp)
{
    BlockDriverState *new_bs = NULL;
    if (!bs->drv->change_child) {
        optdict_free(options);
        error_setg(errp, "Node '%s' (%s) cannot change its children while in use",
                   bs->node_name, bs->drv->format_name);
        return -ENOTSUP;
    }
    if (op != BDRV_CHILD_REMOVE) {
        new_bs = bdrv_open_for_child(bs, BDRV_CHILD_DATA, options, errp);
        if (!new_bs) {
            return -EINVAL;
        }
    } else {
        optdict_free(options);
    }
    int ret = bdrv_change_child_bs(bs, op, index, new_bs, errp);
    bdrv_unref(new_bs);
    return ret;
}

uint32_t bdrv_incomplete_children(BlockDriverState *bs)
{
    return bs && bs->drv->incomplete_children ? bs->drv->incomplete_children(bs) : 0;
}

static BlockDriverState *find_changer(BlockDriverState *bs, char *prefix, size_t len,
                                      size_t used)
{
    if (bs->drv->change_child) {
        prefix[used] = 0;
        return bs;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        size_t n = strlen(c->name);
        if (used + n + 2 > len) {
            continue;
        }
        memcpy(prefix + used, c->name, n);
        prefix[used + n] = '.';
        BlockDriverState *found = find_changer(c->bs, prefix, len, used + n + 1);
        if (found) {
            return found;
        }
    }
    return NULL;
}

BlockDriverState *bdrv_find_child_changer(BlockDriverState *root, char *prefix, size_t len)
{
    if (!root || len == 0) {
        return NULL;
    }
    prefix[0] = 0;
    BlockDriverState *bs = find_changer(root, prefix, len, 0);
    if (!bs) {
        prefix[0] = 0;
    }
    return bs;
}

/* ---- read-only / read-write ---- */

typedef struct ReopenSet {
    BlockDriverState **nodes;     /* children before parents */
    int n, alloc;
} ReopenSet;

static bool reopen_set_has(const ReopenSet *set, const BlockDriverState *bs)
{
    for (int i = 0; i < set->n; i++) {
        if (set->nodes[i] == bs) {
            return true;
        }
    }
    return false;
}

/* bs and what holds its data, post-order. */
/* -ENOMEM if the set cannot grow (what it holds stays valid). */
static int reopen_set_add(ReopenSet *set, BlockDriverState *bs)
{
    if (reopen_set_has(set, bs)) {
        return 0;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (!(c->role & BDRV_CHILD_COW) && reopen_set_add(set, c->bs) < 0) {
            return -ENOMEM;
        }
    }
    if (set->n == set->alloc) {
        int alloc = set->alloc ? set->alloc * 2 : 8;
        BlockDriverState **nodes = realloc(set->nodes, alloc * sizeof(*nodes));
        if (!nodes) {
            return -ENOMEM;
        }
        set->nodes = nodes;
        set->alloc = alloc;
    }
    set->nodes[set->n++] = bs;
    return 0;
}

int bdrv_reopen_set_read_only(BlockDriverState *bs, bool read_only, Error **errp)
{
    ReopenSet set = { 0 };
    int ret = 0, prepared = 0;

    if (reopen_set_add(&set, bs) < 0) {
        error_setg(errp, "Cannot reopen '%s': out of memory", bs->node_name);
        ret = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < set.n; i++) {
        BlockDriverState *n = set.nodes[i];
        if (!read_only && (n->open_flags & BDRV_O_FORCE_SHARE)) {
            error_setg(errp, "Cannot make '%s' read-write: force-share=on can only be used "
                       "with read-only images", n->node_name);
            ret = -EINVAL;
            goto out;
        }
        for (BdrvChild *c = n->parents; read_only && c; c = c->next_parent) {
            if (edge_writes(c) && !reopen_set_has(&set, c->parent)) {
                error_setg(errp, "Cannot make '%s' read-only: node '%s' writes to it",
                           n->node_name, c->parent->node_name);
                ret = -EPERM;
                goto out;
            }
        }
    }

    bdrv_drained_begin(bs);
    if (read_only && !bs->read_only) {
        ret = bdrv_flush(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Cannot make '%s' read-only: flush failed",
                             bs->node_name);
            goto end;
        }
    }
    for (; prepared < set.n; prepared++) {
        BlockDriverState *n = set.nodes[prepared];
        int flags = read_only ? n->open_flags & ~BDRV_O_RDWR : n->open_flags | BDRV_O_RDWR;
        if (n->drv->reopen_prepare && flags != n->open_flags) {
            ret = n->drv->reopen_prepare(n, flags, errp);
            if (ret < 0) {
                break;
            }
        }
    }
    /* Permissions for the new mode: root edges of the nodes follow it (their
     * users reopen with them), the rest is derived; every node of the set is
     * checked, so drivers move their locks to what they reopened. */
    BdrvPermTx *tx = NULL;
    if (ret == 0) {
        for (int i = 0; i < set.n; i++) {
            BlockDriverState *n = set.nodes[i];
            n->reopen_flags = read_only ? n->open_flags & ~BDRV_O_RDWR
                                        : n->open_flags | BDRV_O_RDWR;
            n->reopen_pending = true;
        }
        tx = bdrv_perm_tx_new();
        for (int i = set.n; i-- > 0;) {
            for (BdrvChild *c = set.nodes[i]->parents; c; c = c->next_parent) {
                if (!c->parent && !c->no_perm) {
                    unsigned mode = read_only ? 0 : BLK_PERM_WRITE | BLK_PERM_RESIZE;
                    bdrv_perm_tx_set_edge(tx, c, (c->perm & ~(BLK_PERM_WRITE | BLK_PERM_RESIZE)) |
                                          mode, c->shared_perm);
                }
            }
            bdrv_perm_tx_update(tx, set.nodes[i]);
        }
        ret = bdrv_perm_tx_check(tx, errp);
        if (ret < 0) {
            bdrv_perm_tx_abort(tx);
        } else {
            bdrv_perm_tx_commit(tx);
        }
        for (int i = 0; i < set.n; i++) {
            set.nodes[i]->reopen_pending = false;
        }
    }
    if (ret < 0) {
        while (prepared-- > 0) {
            BlockDriverState *n = set.nodes[prepared];
            bool changes = read_only ? (n->open_flags & BDRV_O_RDWR) : !(n->open_flags & BDRV_O_RDWR);
            if (changes && n->drv->reopen_prepare && n->drv->reopen_abort) {
                n->drv->reopen_abort(n);
            }
        }
        goto end;
    }
    for (int i = 0; i < set.n; i++) {
        BlockDriverState *n = set.nodes[i];
        int flags = read_only ? n->open_flags & ~BDRV_O_RDWR : n->open_flags | BDRV_O_RDWR;
        if (flags == n->open_flags) {
            continue;
        }
        if (n->drv->reopen_prepare && n->drv->reopen_commit) {
            n->drv->reopen_commit(n);
        }
        n->open_flags = flags;
        n->read_only = read_only;
    }
end:
    bdrv_drained_end(bs);
out:
    free(set.nodes);
    return ret;
}

/* ---- threads ---- */

AioContext *bdrv_get_home_context(BlockDriverState *bs)
{
    return bs->home_ctx;
}

typedef struct NodeList {
    BlockDriverState **nodes;
    size_t n, alloc;
} NodeList;

/* Post-order, each node once (a node may be the child of several parents):
 * every node comes after all of its children. */
static void collect_post_order(NodeList *l, BlockDriverState *bs)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->nodes[i] == bs) {
            return;
        }
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        collect_post_order(l, c->bs);
    }
    if (l->n == l->alloc) {
        l->alloc = l->alloc ? 2 * l->alloc : 8;
        l->nodes = realloc(l->nodes, l->alloc * sizeof(*l->nodes));
        if (!l->nodes) {
            abort();
        }
    }
    l->nodes[l->n++] = bs;
}

void bdrv_attach_thread(BlockDriverState *bs, AioContext *ctx)
{
    NodeList l = { 0 };
    collect_post_order(&l, bs);
    for (size_t i = 0; i < l.n; i++) {
        BlockDriverState *n = l.nodes[i];
        if (n->drv->attach_thread && n->home_ctx != ctx) {
            n->drv->attach_thread(n, ctx);
        }
    }
    free(l.nodes);
}

void bdrv_detach_thread(BlockDriverState *bs, AioContext *ctx)
{
    NodeList l = { 0 };
    collect_post_order(&l, bs);
    for (size_t i = l.n; i-- > 0;) {
        BlockDriverState *n = l.nodes[i];
        if (n->drv->detach_thread && n->home_ctx != ctx) {
            n->drv->detach_thread(n, ctx);
        }
    }
    free(l.nodes);
}

/* ---- limits ---- */

static uint64_t min_non_zero(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : MIN(a, b);
}

static void merge_limits(BlockLimits *dst, const BlockLimits *src, BdrvChildRole role)
{
    dst->request_alignment = MAX(dst->request_alignment, src->request_alignment);
    dst->max_transfer = min_non_zero(dst->max_transfer, src->max_transfer);
    dst->opt_transfer = MAX(dst->opt_transfer, src->opt_transfer);
    dst->pdiscard_alignment = MAX(dst->pdiscard_alignment, src->pdiscard_alignment);
    dst->max_pdiscard = min_non_zero(dst->max_pdiscard, src->max_pdiscard);
    dst->pwrite_zeroes_alignment = MAX(dst->pwrite_zeroes_alignment,
                                       src->pwrite_zeroes_alignment);
    dst->max_pwrite_zeroes = min_non_zero(dst->max_pwrite_zeroes, src->max_pwrite_zeroes);
    dst->min_mem_alignment = MAX(dst->min_mem_alignment, src->min_mem_alignment);
    dst->opt_mem_alignment = MAX(dst->opt_mem_alignment, src->opt_mem_alignment);
    dst->max_iov = (int)min_non_zero((uint64_t)dst->max_iov, (uint64_t)src->max_iov);
    if (role & (BDRV_CHILD_DATA | BDRV_CHILD_FILTERED)) {
        dst->has_discard |= src->has_discard;
    }
}

void bdrv_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BlockLimits bl = {
        .request_alignment = 1,
        .min_mem_alignment = 1,
        .opt_mem_alignment = (size_t)sysconf(_SC_PAGESIZE),
    };
    for (BdrvChild *c = bs->children; c; c = c->next) {
        bdrv_refresh_limits(c->bs, NULL);
        /* Only children a guest request can reach limit it: not a format's
         * metadata-only file (qcow2 with a data-file). */
        if (c->role & (BDRV_CHILD_DATA | BDRV_CHILD_FILTERED | BDRV_CHILD_COW)) {
            merge_limits(&bl, &c->bs->bl, c->role);
        }
    }
    bs->bl = bl;
    if (bs->drv && bs->drv->refresh_limits) {
        bs->drv->refresh_limits(bs, errp);
    }
    /* Keep the request path's invariants whatever the driver set. */
    if (!IS_POW2(bs->bl.request_alignment)) {
        bs->bl.request_alignment = 1;
    }
    if (bs->bl.max_transfer) {
        bs->bl.max_transfer = MAX(ALIGN_DOWN(bs->bl.max_transfer,
                                             (uint64_t)bs->bl.request_alignment),
                                  (uint64_t)bs->bl.request_alignment);
    }
    if (bs->bl.min_mem_alignment == 0) {
        bs->bl.min_mem_alignment = 1;
    }
    bs->bl.opt_mem_alignment = MAX(bs->bl.opt_mem_alignment, bs->bl.min_mem_alignment);
}

/* ---- queries ---- */

const char *bdrv_driver_name(const BlockDriver *drv)
{
    return drv->format_name;
}

const CreateOptDesc *bdrv_driver_create_opts(const BlockDriver *drv)
{
    return drv->create_opts;
}

bool bdrv_driver_can_create(const BlockDriver *drv)
{
    return drv->co_create != NULL;
}

bool bdrv_driver_supports_backing(const BlockDriver *drv)
{
    return drv->supports_backing;
}

bool bdrv_driver_supports_compression(const BlockDriver *drv)
{
    return drv->co_pwritev_compressed;
}

bool bdrv_can_truncate(BlockDriverState *bs, BlockDriverState **which)
{
    /* bdrv_co_truncate's own fallback chain: the driver's, else a filter's child. */
    while (bs && bs->drv && !bs->drv->co_truncate) {
        BlockDriverState *below = bdrv_filter_bs(bs);
        if (!below) {
            break;
        }
        bs = below;
    }
    if (bs && bs->drv && bs->drv->co_truncate) {
        return true;
    }
    if (which) {
        *which = bs;
    }
    return false;
}

const char *bdrv_get_node_name(const BlockDriverState *bs)
{
    return bs->node_name;
}

const char *bdrv_get_filename(const BlockDriverState *bs)
{
    return bs->filename;
}

const char *bdrv_get_backing_filename(const BlockDriverState *bs)
{
    return bs->backing_file;
}

const char *bdrv_get_backing_format(const BlockDriverState *bs)
{
    return bs->backing_format;
}

const BlockLimits *bdrv_get_limits(const BlockDriverState *bs)
{
    return &bs->bl;
}

bool bdrv_is_read_only(const BlockDriverState *bs)
{
    return bs->read_only;
}

void bdrv_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    if (bs->drv && bs->drv->get_specific_info) {
        bs->drv->get_specific_info(bs, info);
    }
}

static void get_counters_under(BlockDriverState *bs, const char *path, ImageSpecificInfo *info,
                               int depth)
{
    if (depth > 16) {
        return;
    }
    if (bs->drv && bs->drv->get_counters) {
        ImageSpecificInfo own = { 0 };
        bs->drv->get_counters(bs, &own);
        for (int i = 0; i < own.n; i++) {
            char key[320];
            snprintf(key, sizeof(key), "%s%s", path, own.entries[i].key);
            image_info_add(info, key, "%s", own.entries[i].value);
            info->entries[info->n - 1].is_number = own.entries[i].is_number;
        }
        image_info_free(&own);
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        char sub[256];
        snprintf(sub, sizeof(sub), "%s%s/", path, c->name);
        get_counters_under(c->bs, sub, info, depth + 1);
    }
}

void bdrv_get_counters(BlockDriverState *bs, ImageSpecificInfo *info)
{
    get_counters_under(bs, "", info, 0);
}

void bdrv_set_total_bytes(BlockDriverState *bs, int64_t bytes)
{
    __atomic_store_n(&bs->total_bytes, bytes, __ATOMIC_RELEASE);
}

void bdrv_note_growth(BlockDriverState *bs, int64_t end)
{
    int64_t cur = __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED);
    while (end > cur &&
           !__atomic_compare_exchange_n(&bs->total_bytes, &cur, end, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

int64_t bdrv_get_total_bytes(const BlockDriverState *bs)
{
    return __atomic_load_n(&bs->total_bytes, __ATOMIC_ACQUIRE);
}

const char *bdrv_get_format_name(const BlockDriverState *bs)
{
    return bs && bs->drv ? bs->drv->format_name : NULL;
}

int64_t bdrv_getlength(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    if (bs->drv->getlength) {
        int64_t len = bs->drv->getlength(bs);
        if (len >= 0) {
            __atomic_store_n(&bs->total_bytes, len, __ATOMIC_RELAXED);
        }
        return len;
    }
    return __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED);
}

int64_t bdrv_get_allocated_file_size(BlockDriverState *bs)
{
    if (bs->drv->get_allocated_file_size) {
        return bs->drv->get_allocated_file_size(bs);
    }
    /* A format's storage is its children's (file, data file, ...). */
    int64_t sum = 0;
    bool any = false;
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (c->role & (BDRV_CHILD_DATA | BDRV_CHILD_METADATA | BDRV_CHILD_FILTERED)) {
            int64_t n = bdrv_get_allocated_file_size(c->bs);
            if (n < 0) {
                return n;
            }
            sum += n;
            any = true;
        }
    }
    return any ? sum : -ENOTSUP;
}

int bdrv_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    memset(bdi, 0, sizeof(*bdi));
    if (bs->drv->get_info) {
        return bs->drv->get_info(bs, bdi);
    }
    if (bs->drv->is_filter && bs->file) {
        return bdrv_get_info(bs->file->bs, bdi);
    }
    return -ENOTSUP;
}

int bdrv_has_zero_init(BlockDriverState *bs)
{
    if (bs->drv->has_zero_init) {
        return bs->drv->has_zero_init(bs);
    }
    if (bs->drv->is_filter && bs->file) {
        return bdrv_has_zero_init(bs->file->bs);
    }
    return 0;
}

bool bdrv_supports_compressed_writes(BlockDriverState *bs)
{
    return bs->drv && bdrv_driver_supports_compression(bs->drv);
}

BlockDriverState *bdrv_skip_filters(BlockDriverState *bs)
{
    while (bs && bs->drv && bs->drv->is_filter && bs->file) {
        bs = bs->file->bs;
    }
    return bs;
}

BlockDriverState *bdrv_backing_bs(BlockDriverState *bs)
{
    return bs && bs->backing ? bs->backing->bs : NULL;
}

/* ---- graph description ---- */

static void graph_append(OptDict *out, BlockDriverState *bs, const char *prefix)
{
    char key[512];
    snprintf(key, sizeof(key), "%sdriver", prefix);
    optdict_set(out, key, bs->drv->format_name);
    if (bs->node_name && bs->node_name[0] != '#') {
        snprintf(key, sizeof(key), "%snode-name", prefix);
        optdict_set(out, key, bs->node_name);
    }
    for (size_t i = 0; i < optdict_count(bs->own_options); i++) {
        snprintf(key, sizeof(key), "%s%s", prefix, optdict_key_at(bs->own_options, i));
        optdict_set(out, key, optdict_value_at(bs->own_options, i));
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        snprintf(key, sizeof(key), "%s%s.", prefix, c->name);
        graph_append(out, c->bs, key);
    }
}

char *bdrv_graph_to_string(BlockDriverState *bs)
{
    OptDict *d = optdict_new();
    graph_append(d, bs, "");
    char *s = optdict_to_string(d);
    optdict_free(d);
    return s;
}

/* ---- cache modes ---- */

int bdrv_parse_cache_mode(const char *mode, int *flags, Error **errp)
{
    int f = *flags & ~(BDRV_O_NOCACHE | BDRV_O_NO_FLUSH | BDRV_O_WRITETHROUGH);
    if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        f |= BDRV_O_NOCACHE;
    } else if (!strcmp(mode, "directsync")) {
        f |= BDRV_O_NOCACHE | BDRV_O_WRITETHROUGH;
    } else if (!strcmp(mode, "writeback")) {
        /* buffered, flushes honoured */
    } else if (!strcmp(mode, "writethrough")) {
        f |= BDRV_O_WRITETHROUGH;
    } else if (!strcmp(mode, "unsafe")) {
        f |= BDRV_O_NO_FLUSH;
    } else {
        error_setg(errp, "Invalid cache mode '%s': expected none, writeback, writethrough, "
                   "directsync or unsafe", mode);
        return -EINVAL;
    }
    *flags = f;
    return 0;
}

/* ---- `img info` format-specific lines ---- */

static ImageInfoEntry *info_new_entry(ImageSpecificInfo *info, const char *key)
{
    if (info->n == info->alloc) {
        info->alloc = info->alloc ? info->alloc * 2 : 8;
        info->entries = realloc(info->entries, (size_t)info->alloc * sizeof(*info->entries));
        if (!info->entries) {
            abort();
        }
    }
    ImageInfoEntry *e = &info->entries[info->n++];
    memset(e, 0, sizeof(*e));
    e->key = strdup(key);
    return e;
}

void image_info_add(ImageSpecificInfo *info, const char *key, const char *fmt, ...)
{
    ImageInfoEntry *e = info_new_entry(info, key);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&e->value, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
}

void image_info_add_int(ImageSpecificInfo *info, const char *key, int64_t value)
{
    ImageInfoEntry *e = info_new_entry(info, key);
    if (asprintf(&e->value, "%lld", (long long)value) < 0) {
        abort();
    }
    e->is_number = true;
}

void image_info_add_bool(ImageSpecificInfo *info, const char *key, bool value)
{
    ImageInfoEntry *e = info_new_entry(info, key);
    e->value = strdup(value ? "true" : "false");
    e->is_bool = true;
}

void image_info_add_json(ImageSpecificInfo *info, const char *key, const char *json,
                         const char *human)
{
    ImageInfoEntry *e = info_new_entry(info, key);
    e->value = strdup(json);
    e->human = strdup(human);
    if (!e->value || !e->human) {
        abort();
    }
}

void image_info_free(ImageSpecificInfo *info)
{
    for (int i = 0; i < info->n; i++) {
        free(info->entries[i].key);
        free(info->entries[i].value);
        free(info->entries[i].human);
    }
    free(info->entries);
    memset(info, 0, sizeof(*info));
}
