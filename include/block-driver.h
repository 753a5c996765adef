/*
 * block-driver.h - the driver API: what a BlockDriver implements and what it
 * may call.  Drivers (drivers/), the block layer (io/) and the unit tests
 * include it; ublk/ and tools/ use only block.h and block-backend.h.
 *
 * A node (BlockDriverState) is an instance of a BlockDriver (ops table) with
 * driver state (bs->opaque, drv->instance_size bytes) and children, each a
 * BdrvChild edge with a name ("file", "backing", "data-file", "children.N")
 * and a role.  Nodes are reference counted; a child edge holds a reference.
 *
 * The request path (io/block-io.c) sits between every caller and every
 * driver callback, in one place: alignment padding with read-modify-write,
 * serialisation of overlapping requests during an RMW, max_transfer
 * splitting, FUA emulation, write-zeroes fallback, detect-zeroes, discard
 * policy, copy-on-read, zero-fill beyond EOF, in-flight counting and drain.
 * Drivers call bdrv_co_* on their children, so each layer gets the same rules.
 * All bdrv_co_* functions must run in a coroutine and return -errno.
 *
 * Every driver callback is optional; the core supplies a fallback
 * (e.g. write-zeroes -> writes of a zero buffer, block status -> "all data").
 * A node opened from a probed raw format refuses writes to its first sector
 * that would make it probe as another format (-EPERM), as QEMU does.
 *
 * Drivers read the BlockDriverState fields they need; the size is the one
 * field they change, through bdrv_set_total_bytes / bdrv_note_growth.
 */
#ifndef UBLKD_BLOCK_DRIVER_H
#define UBLKD_BLOCK_DRIVER_H

#include "block.h"
#include "thread-slot.h"

typedef struct BdrvTrackedRequest BdrvTrackedRequest;

/*
 * What a child is to its parent: flags, with QEMU's meanings (and values).
 *   raw over a file             "file"      FILTERED | PRIMARY
 *                               (with offset/size: DATA | PRIMARY)
 *   a filter (blkdebug)         "image"     FILTERED | PRIMARY
 *   vdi, qcow2 without data-file "file"     DATA | METADATA | PRIMARY
 *   qcow2 with a data-file      "file"      METADATA | PRIMARY
 *                               "data-file" DATA
 *   any format's backing file   "backing"   COW
 *   quorum                      "children.N" DATA
 * The graph follows from them: a parent's limits merge from its DATA,
 * FILTERED and COW children (every child a guest request can reach);
 * has_discard from DATA and FILTERED ones (where the guest's data lives);
 * read-only/read-write reopens go down every child but COW ones; the
 * permissions a parent asks of a child follow from the role (child_perm).
 * FILTERED excludes DATA, METADATA and COW: the child is the parent's data.
 */
enum {
    BDRV_CHILD_DATA     = 1 << 0,   /* holds (part of) the guest-visible data */
    BDRV_CHILD_METADATA = 1 << 1,   /* holds the parent's format metadata */
    BDRV_CHILD_FILTERED = 1 << 2,   /* the parent forwards requests to it unchanged */
    BDRV_CHILD_COW      = 1 << 3,   /* backing: read where the parent has no data */
    BDRV_CHILD_PRIMARY  = 1 << 4,   /* the parent's bs->file (one per parent) */
    BDRV_CHILD_IMAGE    = BDRV_CHILD_DATA | BDRV_CHILD_METADATA,
};
typedef unsigned BdrvChildRole;

/*
 * Permissions (QEMU's values).  Each edge records what its parent needs of
 * the child (perm) and what it lets every other user of the child do
 * (shared_perm); attaching or changing an edge whose needs another edge does
 * not share is refused ("Conflicts with use by node 'top' as 'backing',
 * which does not allow 'write' on node 'base'").  A node's cumulative
 * permissions (bdrv_get_cumulative_perm) are what its driver must provide:
 * the file protocol takes QEMU's image lock bytes from them.  A node that
 * nobody has attached yet is held by its opener: read, plus write and
 * resize if read-write; sharing only reads (everything with force-share).
 * See io/block-perm.c.
 */
enum {
    BLK_PERM_CONSISTENT_READ = 1 << 0,   /* reads see what was written */
    BLK_PERM_WRITE           = 1 << 1,
    BLK_PERM_WRITE_UNCHANGED = 1 << 2,   /* writes that keep the data (copy-on-read) */
    BLK_PERM_RESIZE          = 1 << 3,
    BLK_PERM_ALL             = (1 << 4) - 1,
    /* What an exclusive user (a BlockBackend, a format's metadata file)
     * lets others do: read, and write what is already there. */
    BLK_PERM_EXCLUSIVE_SHARED = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED,
};

struct BdrvChild {
    BlockDriverState *bs;       /* the child node (holds a reference) */
    BlockDriverState *parent;
    char *name;                 /* "file", "backing", "children.0", ... */
    BdrvChildRole role;         /* BDRV_CHILD_* flags */
    unsigned perm;              /* BLK_PERM_*: what the parent needs of bs */
    unsigned shared_perm;       /* BLK_PERM_*: what it lets other users of bs do */
    bool no_perm;               /* a root handle that states no needs (see
                                 * bdrv_attach_child): left out of them */
    int index;                  /* N for "children.N", else -1 */
    BdrvChild *next;            /* sibling in parent->children */

    /* Drain (io/block-io-drain.c); the graph fields change on the main
     * thread only, inside drained sections. */
    BdrvChild *next_parent;     /* sibling in bs->parents */
    int parent_quiesce;         /* drained sections of bs passed on to the parent
                                 * (always bs->quiesce_counter); atomic, a root
                                 * edge's requests read it */
    CoQueue drain_queue;        /* root edge: its requests waiting for drained_end */
    const struct BdrvRootOps *root_ops;   /* root edge: its user's callbacks, or NULL */
    void *root_opaque;
};

/*
 * The user of a root edge (parent == NULL: a BlockBackend, a tool's handle).
 * Without root_ops the request path holds back the edge's new requests while
 * the node below is quiesced.  With root_ops the user admits its own
 * requests (bdrv_co_root_admit, e.g. before throttling, so that a throttled
 * request is already counted and can be released) and is told when drained
 * sections begin and end on the node it uses.
 */
typedef struct BdrvRootOps {
    void (*drained_begin)(BdrvChild *root);
    void (*drained_end)(BdrvChild *root);
} BdrvRootOps;

struct BdrvSnapshotInfo;

struct BlockDriver {
    const char *format_name;
    /*
     * A protocol's filename prefixes, without the ':' ("file" for
     * "file:/path", "null-co" for "null-co://"): bdrv_open of such a
     * filename opens this driver, which is handed the whole filename and
     * strips what it does not need.  A filename without a registered prefix
     * is a path, for the "file" protocol.
     */
    const char *protocol_names[4];
    size_t instance_size;
    bool is_format;              /* false for protocols (file, null) */
    bool is_filter;              /* forwards to its only child (file role) */
    bool supports_backing;
    /*
     * The driver reads or writes the bytes of request buffers itself
     * (compression, encryption, quorum voting): the request path hands it a
     * mapped bounce instead of registered-buffer references (include/iov.h).
     * Drivers without it must pass references down untouched, or use
     * include/iov-fixed.h where they set or look at bytes.
     */
    bool needs_mapped_data;
    /*
     * Discards and zero writes may free storage that an in-place write in
     * flight still targets (qcow2 overwrites allocated clusters without a
     * lock): the block layer makes them serialising, at the node's cluster
     * size, so they wait for overlapping requests and later ones wait for
     * them.  A freed cluster is then never written by a request that looked
     * it up before it was freed.
     */
    bool serialise_unmap;

    /* Score 0..100 that buf (first BLOCK_PROBE_BUF_SIZE bytes) is this format. */
    int (*probe)(const uint8_t *buf, int buf_size, const char *filename);
    /*
     * Open bs.  Protocols find "filename" in options; formats open their
     * children with bdrv_open_child().  Consume every option you understand
     * (optdict_take_*); leftovers become an error.  Formats that support
     * backing set bs->backing_file/backing_format; the core opens it after.
     */
    int (*open)(BlockDriverState *bs, OptDict *options, int flags, Error **errp);
    void (*close)(BlockDriverState *bs);
    void (*refresh_limits)(BlockDriverState *bs, Error **errp);
    /*
     * Permissions.  child_perm says what bs needs of child c (role: c's
     * role) and what it shares, given what bs's own users need (perm) and
     * share (shared); without it bdrv_default_child_perm decides by role.
     * check_perm is told bs's new cumulative permissions and may refuse
     * (the file protocol takes its lock bytes there); then exactly one of
     * set_perm (commit, cannot fail) or abort_perm_update follows.  A
     * failed check_perm undoes itself.  Inside a reopen (see reopen_prepare)
     * check_perm runs after prepare and before commit or abort.
     */
    void (*child_perm)(BlockDriverState *bs, BdrvChild *c, BdrvChildRole role,
                       unsigned perm, unsigned shared, unsigned *nperm, unsigned *nshared);
    int (*check_perm)(BlockDriverState *bs, unsigned perm, unsigned shared, Error **errp);
    void (*set_perm)(BlockDriverState *bs, unsigned perm, unsigned shared);
    void (*abort_perm_update)(BlockDriverState *bs);

    int coroutine_fn (*co_preadv)(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
    int coroutine_fn (*co_pwritev)(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
    int coroutine_fn (*co_pwrite_zeroes)(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags);
    /*
     * A write with BDRV_REQ_WRITE_COMPRESSED (QEMU's
     * bdrv_co_pwritev_compressed_part): the driver stores the data
     * compressed where that saves space, plainly where it does not.  The
     * request is whole clusters (the last may end at the end of the image),
     * not split at max_transfer, on mapped memory, and serialised against
     * every overlapping request of the node.  bytes == 0 says the caller's
     * compressed output is complete (qemu-img convert -c ends with it).
     */
    int coroutine_fn (*co_pwritev_compressed)(BlockDriverState *bs, int64_t offset,
                                              int64_t bytes, IOVector *qiov,
                                              size_t qiov_offset);
    int coroutine_fn (*co_pdiscard)(BlockDriverState *bs, int64_t offset, int64_t bytes);
    int coroutine_fn (*co_flush_to_os)(BlockDriverState *bs);
    int coroutine_fn (*co_flush_to_disk)(BlockDriverState *bs);
    /* The whole flush of the node and everything below it (QEMU's
     * bdrv_co_flush callback): the core then neither calls the two above
     * nor flushes the children itself.  For a driver whose flush succeeds
     * without every child's (quorum's vote). */
    int coroutine_fn (*co_flush)(BlockDriverState *bs);
    /* Return BDRV_BLOCK_* for [offset, offset+*pnum); *pnum <= bytes, > 0. */
    int coroutine_fn (*co_block_status)(BlockDriverState *bs, bool want_zero, int64_t offset,
                                        int64_t bytes, int64_t *pnum, int64_t *map,
                                        BlockDriverState **file);
    int coroutine_fn (*co_truncate)(BlockDriverState *bs, int64_t offset, bool exact,
                                    PreallocMode prealloc, BdrvRequestFlags flags, Error **errp);
    int coroutine_fn (*co_check)(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);
    /* bdrv_measure (block.h); opts as for co_create, the driver takes what it reads. */
    int (*measure)(OptDict *opts, BlockDriverState *in_bs, BlockMeasureInfo *info,
                   Error **errp);
    /*
     * The room bs's persistent dirty bitmaps would take in an image of
     * cluster_size (bitmap data, tables and directory, as QEMU's
     * qcow2_get_persistent_dirty_bitmap_size counts them): 0, or -ENOTSUP
     * when the format (or this image's version) has no persistent bitmaps.
     */
    int (*bitmaps_size)(BlockDriverState *bs, uint64_t cluster_size, uint64_t *size);
    /* One `img bitmap` action on bs's persistent bitmaps (qemu-img 7.2's
     * semantics and messages); bs is open read-write, the change reaches
     * the image when it is closed. */
    int (*bitmap_op)(BlockDriverState *bs, const BdrvBitmapOp *op, Error **errp);
    /* bs's persistent bitmaps (bdrv_bitmap_list), read-only opens too. */
    int (*bitmap_list)(BlockDriverState *bs, BdrvBitmapInfo **list, size_t *nb);
    /* A discard request as the caller made it, before it is cut to whole
     * aligned blocks (and maybe dropped): for dirty tracking.  Any thread,
     * lock-free. */
    void (*note_discard)(BlockDriverState *bs, int64_t offset, int64_t bytes);
    /*
     * Record another backing file in the image's metadata (QEMU's
     * .bdrv_change_backing_file): file as it is to be stored (NULL: no
     * backing file), fmt the backing format to record (NULL: none).  Only
     * the metadata changes: no data is copied and the open backing child
     * stays as it is (img rebase copies what differs first).  What the
     * image already holds is made durable before the new name is, and the
     * change reaches the disk in one write.  -ENOSPC when the header has no
     * room for it, -EINVAL for a name the format cannot store; the caller
     * (bdrv_change_backing_file) drains bs around it.  Formats without
     * backing files leave it out: -ENOTSUP.
     */
    int coroutine_fn (*co_change_backing_file)(BlockDriverState *bs, const char *file,
                                               const char *fmt);
    /*
     * Drop everything the image allocates so that it reads as its backing
     * file (QEMU's .bdrv_make_empty, for img commit without -d); bs is
     * drained.  -ENOTSUP without it.
     */
    int coroutine_fn (*co_make_empty)(BlockDriverState *bs);
    /*
     * Internal snapshots (qcow2; include/block-snapshot.h): the list (a
     * malloc'd array the caller frees; the count or -errno), and create,
     * apply (goto: by id, then by name) and delete (by id and/or name) on
     * a drained, writable bs.  -errno with errp set.
     */
    int (*snapshot_list)(BlockDriverState *bs, struct BdrvSnapshotInfo **list);
    int coroutine_fn (*co_snapshot_create)(BlockDriverState *bs, struct BdrvSnapshotInfo *sn,
                                           Error **errp);
    int coroutine_fn (*co_snapshot_goto)(BlockDriverState *bs, const char *id_or_name,
                                         Error **errp);
    int coroutine_fn (*co_snapshot_delete)(BlockDriverState *bs, const char *id,
                                           const char *name, Error **errp);
    /*
     * img amend -o (QEMU's .bdrv_amend_options): opts hold the options the
     * user gave, each checked against amend_opts for its type (a "size"
     * in bytes, 0 for none); cb reports progress (may be NULL).  bs is
     * drained.  -errno with errp set.
     */
    int coroutine_fn (*co_amend)(BlockDriverState *bs, OptDict *opts, BdrvAmendStatusCB *cb,
                                 void *opaque, bool force, Error **errp);
    const CreateOptDesc *amend_opts;
    /* Create an image; opts hold "size" and the format's -o options. */
    int coroutine_fn (*co_create)(const char *filename, OptDict *opts, Error **errp);
    const CreateOptDesc *create_opts;

    int64_t (*getlength)(BlockDriverState *bs);              /* bytes or -errno */
    int64_t (*get_allocated_file_size)(BlockDriverState *bs);
    int (*get_info)(BlockDriverState *bs, BlockDriverInfo *bdi);
    void (*get_specific_info)(BlockDriverState *bs, ImageSpecificInfo *info);
    /*
     * Counters the driver keeps while it serves (quorum: per child reads,
     * errors, corruptions found, rewrites), as integer entries whose keys
     * say what they count ("children.0.reads").  `ublkd list` shows them.
     * Called on the main thread while queue threads run: read atomics.
     */
    void (*get_counters)(BlockDriverState *bs, ImageSpecificInfo *out);
    /* 1 if a freshly created image of this driver reads as zeros. */
    int (*has_zero_init)(BlockDriverState *bs);
    /*
     * Per-thread driver state.  attach_thread runs on a thread that starts
     * issuing requests to bs (a ublk queue thread, a thread of `img bench`)
     * before its first request, with its AioContext; detach_thread runs on
     * the same thread after its last request has completed.  Children are
     * attached before their parents and detached after them, so a parent can
     * rely on its children's state in both.  The home context's thread is
     * not attached: open and close cover it.  Neither may fail or yield.
     */
    void (*attach_thread)(BlockDriverState *bs, AioContext *ctx);
    void (*detach_thread)(BlockDriverState *bs, AioContext *ctx);
    /* Called when the first drained section that affects the node begins and
     * when the last one ends (nested sections count): the node is drained,
     * below a drained node, or above one (its requests would reach it).
     * Stop and restart background work here.  Parents are told before their
     * children at the beginning, after them at the end. */
    void (*drain_begin)(BlockDriverState *bs);
    void (*drain_end)(BlockDriverState *bs);
    /*
     * Switch between read-only and read-write (flags: the new open_flags),
     * called inside a drained section of the node, children before parents.
     * prepare may fail and then changes nothing; commit cannot fail; abort
     * undoes a successful prepare.  A driver without prepare has nothing
     * that depends on the mode.
     */
    int (*reopen_prepare)(BlockDriverState *bs, int flags, Error **errp);
    void (*reopen_commit)(BlockDriverState *bs);
    void (*reopen_abort)(BlockDriverState *bs);

    /*
     * Numbered children on a live graph (bdrv_change_child, block.h): new_bs
     * is opened (NULL for a remove) and not consumed.  The driver does the
     * graph change itself, inside drained sections it picks (quorum: of the
     * child that goes or comes only), and refuses what it cannot do with a
     * message saying why.  Returns the index changed or -errno.
     */
    int (*change_child)(BlockDriverState *bs, BdrvChildChange op, int index,
                        BlockDriverState *new_bs, Error **errp);
    /* bdrv_incomplete_children (block.h); main thread. */
    uint32_t (*incomplete_children)(BlockDriverState *bs);

    /* Copied to bs->supported_* before open; open may narrow them (e.g. raw
     * keeps FUA only if its child has it). */
    BdrvRequestFlags supported_write_flags;   /* FUA handled natively */
    BdrvRequestFlags supported_zero_flags;    /* MAY_UNMAP / FUA / NO_FALLBACK natively */
};

/* Per-thread counters of a node.  Each pair counts starts and ends, both only
 * ever growing: a reader sums the ends before the starts, so a request that
 * starts on one thread and ends on another is never counted as ended and
 * not started (the sum cannot miss a request in flight). */
typedef struct BdrvNodeSlot {
    uint64_t in_flight_started, in_flight_ended;
    uint64_t untracked_started, untracked_ended;
    uint64_t write_gen;
} __attribute__((aligned(CACHE_LINE))) BdrvNodeSlot;

struct BlockDriverState {
    const BlockDriver *drv;
    void *opaque;                /* driver state, drv->instance_size bytes */
    char *node_name;
    char filename[4096];         /* what the user named (file path for protocols) */
    int open_flags;              /* BDRV_O_* */
    bool read_only;
    bool probed;                 /* format was probed, not given */
    int refcnt;                  /* atomic */

    BdrvChild *children;         /* all edges, in open order */
    BdrvChild *file;             /* role "file", or NULL */
    BdrvChild *backing;          /* role "backing", or NULL */
    char backing_file[4096];     /* as recorded in the image ("" if none) */
    char backing_format[32];

    BlockLimits bl;
    BdrvRequestFlags supported_write_flags, supported_zero_flags;
    BdrvDetectZeroes detect_zeroes;
    unsigned copy_on_read;       /* >0: reads copy backing data up (atomic) */
    bool growable;               /* protocol: writes past EOF extend it */
    bool needs_mapped_data;      /* this node must see the bytes (drv->needs_mapped_data
                                  * for one node: an encrypted qcow2) */
    int64_t total_bytes;         /* cached size, updated by truncate/grow */

    /* Request tracking: serialisation and drain.  reqs_lock is held only to
     * update the list, never across I/O.  While no request is serialising,
     * requests are not listed at all (see block-io.c): the list, its lock and
     * serialising_in_flight are then only read, and stay in every thread's
     * cache. */
    unsigned serialising_in_flight;  /* atomic */
    /* Written only while requests serialise, the node drains or flushes:
     * kept off the read-mostly lines above. */
    pthread_mutex_t reqs_lock __attribute__((aligned(CACHE_LINE)));
    BdrvTrackedRequest *tracked_reqs;
    CoQueue untracked_queue;         /* serialising requests waiting for the
                                      * unlisted ones to finish */
    uint64_t flushed_gen;            /* write generation the last flush covered */
    /* Flush group commit (bdrv_co_flush): one flush runs at a time; a caller
     * whose writes a finished one covers takes its result, the others share
     * the next.  flush_mutex guards these and is never held across I/O;
     * waiters sleep on flush_queue. */
    pthread_mutex_t flush_mutex;
    CoQueue flush_queue;
    bool flush_running;
    uint64_t flush_done_gen;         /* write generation the last finished flush covered */
    int flush_done_ret;              /* ... and its result */
    /* What every request writes, one cache line per thread slot
     * (thread-slot.h): requests in flight (drain), unlisted requests in
     * flight (serialisation), writes done (flush skipping).  Read only as
     * sums, through bdrv_in_flight() and friends. */
    BdrvNodeSlot slot[THREAD_SLOTS];

    /* Drain (io/block-io-drain.c), main thread. */
    int quiesce_counter;         /* drained sections affecting the node (atomic) */
    int subtree_quiesce;         /* of those, sections of this node or an ancestor */
    BdrvChild *parents;          /* edges to this node, by next_parent */

    /* Where the node's background work runs (bdrv_get_home_context). */
    AioContext *home_ctx;

    /* Graph bookkeeping (io/block.c). */
    OptDict *own_options;        /* this node's open options, children excluded */
    bool opened;                 /* drv->open succeeded: close must call drv->close */
    /* Between reopen prepare and commit/abort: the flags being switched to
     * (permissions are computed for them, bdrv_node_writable). */
    bool reopen_pending;
    int reopen_flags;
};

/* ---- driver registry ---- */
/* Add a driver at run time (tests use this for in-memory drivers). */
void bdrv_register(const BlockDriver *drv);
/* The protocol driver for filename: the one whose protocol_names has the
 * part before its first ':' (if no '/' comes first), else "file".  NULL
 * with errp set for a "name://" whose protocol nobody registered. */
const BlockDriver *bdrv_find_protocol(const char *filename, Error **errp);
/* The registered driver scoring highest for buf (NULL if none scores > 0). */
const BlockDriver *bdrv_probe_buf(const uint8_t *buf, int buf_size, const char *filename);

/* ---- graph ---- */
/* Open a node of a known driver with no children (tests, internal use). */
BlockDriverState *bdrv_new_open_driver(const BlockDriver *drv, const char *node_name,
                                       int flags, OptDict *options, Error **errp);
/*
 * For a driver's open: take "<name>.*" (or "<name>" as a filename/reference)
 * from options and open that child under parent.  With allow_none, returns
 * NULL without error if nothing was given.
 */
BdrvChild *bdrv_open_child(const char *filename, OptDict *options, const char *name,
                           BlockDriverState *parent, BdrvChildRole role, bool allow_none,
                           Error **errp);
/*
 * Make child_bs a child of parent.  Consumes the caller's reference to
 * child_bs (it becomes the edge's; dropped on failure too), as QEMU does.
 * Sets parent->file (PRIMARY) / parent->backing (COW) if still unset.
 * parent may be NULL: a root edge for a BlockBackend or a temporary user.
 */
BdrvChild *bdrv_attach_child(BlockDriverState *parent, BlockDriverState *child_bs,
                             const char *name, BdrvChildRole role, Error **errp);
/* A root edge (a user with no parent node) that needs perm of bs and lets
 * others do shared; refused (reference dropped) on a conflict.  A
 * BlockBackend needs what bs's mode allows and shares only
 * BLK_PERM_EXCLUSIVE_SHARED.  A root edge from bdrv_attach_child(NULL, ...)
 * is a handle that states no needs (a test's, a probe's): permissions leave
 * it out, so a node with only such users is still held by its opener. */
BdrvChild *bdrv_root_attach_child(BlockDriverState *bs, const char *name, BdrvChildRole role,
                                  unsigned perm, unsigned shared, Error **errp);
/* Detach and free the edge, dropping its reference (parent may be NULL). */
void bdrv_unref_child(BlockDriverState *parent, BdrvChild *child);
/*
 * Point child (an edge of a node parent) at new_bs instead, inside a drained
 * section of both nodes: requests in flight finish first, new ones wait, and
 * the parent's limits (and its ancestors') are refreshed before they go on.
 * Takes its own reference to new_bs, drops the edge's to the old node.
 * Refused (nothing changed) if the parent writes to the edge and new_bs is
 * read-only, or if new_bs is the parent or below it.
 */
int bdrv_replace_child_bs(BdrvChild *child, BlockDriverState *new_bs, Error **errp);
/* bdrv_change_child with a node already opened (tests; new_bs not consumed).
 * Refused for a new_bs whose graph has a driver with per-thread state
 * (attach_thread): queue threads that already run could not set it up. */
int bdrv_change_child_bs(BlockDriverState *bs, BdrvChildChange op, int index,
                         BlockDriverState *new_bs, Error **errp);
/* Open a node from options (consumed) as parent's child of role would be
 * opened (the flags it inherits), without attaching it. */
BlockDriverState *bdrv_open_for_child(BlockDriverState *parent, BdrvChildRole role,
                                      OptDict *options, Error **errp);
/* For a format's co_create: create the protocol-level image filename names
 * (bdrv_find_protocol) with opts ("size", "preallocation", ...). */
int coroutine_fn bdrv_co_create_file(const char *filename, OptDict *opts, Error **errp);
/* bs's bitmaps_size (-ENOTSUP without one). */
int bdrv_bitmaps_size(BlockDriverState *bs, uint64_t cluster_size, uint64_t *size);
/* Open bs's backing file (bs->backing_file, or "backing.*" options). */
int bdrv_open_backing(BlockDriverState *bs, OptDict *options, Error **errp);
/* Recompute bs->bl from the driver and children (merge: max of alignments,
 * min of non-zero transfer limits). */
void bdrv_refresh_limits(BlockDriverState *bs, Error **errp);
/* Recompute the limits of bs and of every node above it, after its children
 * changed (inside a drained section that covers bs). */
void bdrv_refresh_limits_upward(BlockDriverState *bs);
/* The child edge called name ("file", "backing", "children.0"...), or NULL. */
BdrvChild *bdrv_find_child(BlockDriverState *bs, const char *name);

/* ---- permissions (io/block-perm.c) ---- */
void bdrv_get_cumulative_perm(const BlockDriverState *bs, unsigned *perm, unsigned *shared);
/* QEMU's defaults by role, for drivers' child_perm to start from:
 * FILTERED passes perm/shared through; COW needs at most consistent read and
 * shares writing only if the parent's users do; METADATA needs read (and
 * write+resize while bs is writable) and shares neither write nor resize;
 * DATA shares no resize, and a writer may resize. */
void bdrv_default_child_perm(BlockDriverState *bs, BdrvChild *c, BdrvChildRole role,
                             unsigned perm, unsigned shared, unsigned *nperm, unsigned *nshared);
/* bs is read-write, or becomes so in the reopen under way. */
bool bdrv_node_writable(const BlockDriverState *bs);

/* ---- size ---- */
/*
 * The one way a driver changes the size it reports (bs->total_bytes, which
 * the request path reads for EOF handling): set it after a truncate, or
 * raise it after a write past the end (never lowers it; safe from any
 * thread).
 */
void bdrv_set_total_bytes(BlockDriverState *bs, int64_t bytes);
void bdrv_note_growth(BlockDriverState *bs, int64_t end);
/* The cached size (no driver call). */
int64_t bdrv_get_total_bytes(const BlockDriverState *bs);

/* ---- threads and background work ---- */
/*
 * The node's home AioContext: the context of the thread that opened it (the
 * main thread's in the daemon, which runs its loop while serving).  Work
 * that belongs to no request runs there: timers (aio_timer_init on it),
 * coroutines (aio_co_spawn(bdrv_get_home_context(bs), ...)).
 */
AioContext *bdrv_get_home_context(BlockDriverState *bs);
/*
 * The calling thread, whose AioContext is ctx, starts (attach) or stops
 * (detach) issuing requests to the graph under bs: every node's
 * attach_thread/detach_thread callback runs once, on this thread, children
 * first on attach and parents first on detach; nodes whose home context is
 * ctx are left out.  Users call blk_attach_thread/blk_detach_thread.
 */
void bdrv_attach_thread(BlockDriverState *bs, AioContext *ctx);
void bdrv_detach_thread(BlockDriverState *bs, AioContext *ctx);

/* ---- request path (coroutine context; io/block-io.c) ---- */
int coroutine_fn bdrv_co_preadv(BdrvChild *child, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags);
int coroutine_fn bdrv_co_preadv_part(BdrvChild *child, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwritev(BdrvChild *child, int64_t offset, int64_t bytes,
                                 IOVector *qiov, BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwritev_part(BdrvChild *child, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwrite_zeroes(BdrvChild *child, int64_t offset, int64_t bytes,
                                       BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pdiscard(BdrvChild *child, int64_t offset, int64_t bytes);
int coroutine_fn bdrv_co_flush(BlockDriverState *bs);
int coroutine_fn bdrv_co_truncate(BdrvChild *child, int64_t offset, bool exact,
                                  PreallocMode prealloc, BdrvRequestFlags flags, Error **errp);
int coroutine_fn bdrv_co_block_status(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map, BlockDriverState **file);
int coroutine_fn bdrv_co_is_allocated(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      int64_t *pnum);

/* ---- buffers for drivers ---- */
/* Largest bounce buffer for write-zeroes fallbacks and copy-on-read chunks. */
#define BDRV_MAX_BOUNCE_BUFFER (1 * MiB)
/* A per-thread cache of power-of-two sized buffers, aligned for bs's
 * min_mem_alignment, so padding does not malloc per request in steady state. */
typedef struct BounceBuf {
    void *p;
    size_t size;
    int cls;        /* size class in the cache, -1 if allocated directly */
} BounceBuf;
/* NULL when memory runs out: the request fails with -ENOMEM. */
void *bdrv_bounce_get(BlockDriverState *bs, size_t size, BounceBuf *b);
void bdrv_bounce_put(BounceBuf *b);
/* A shared, never written buffer of zeros (BDRV_MAX_BOUNCE_BUFFER bytes,
 * 4 KiB aligned). */
void *bdrv_zero_buffer(void);

/* ---- drain and root edges ---- */
/* Requests in flight on bs, summed over the threads' slots. */
unsigned bdrv_in_flight(BlockDriverState *bs);
/* Root edges whose user admits its own requests (BdrvRootOps). */
void bdrv_child_set_root_ops(BdrvChild *root, const BdrvRootOps *ops, void *opaque);
/* Wait while root's node is quiesced, then count the request in flight on
 * it until bdrv_root_done(); the request path then lets it through. */
void coroutine_fn bdrv_co_root_admit(BdrvChild *root);
void bdrv_root_done(BdrvChild *root);

/* ---- synchronous wrappers (outside or inside coroutines) ---- */
int bdrv_pread(BdrvChild *child, int64_t offset, int64_t bytes, void *buf, BdrvRequestFlags flags);
int bdrv_pwrite(BdrvChild *child, int64_t offset, int64_t bytes, const void *buf,
                BdrvRequestFlags flags);
int bdrv_pwrite_zeroes(BdrvChild *child, int64_t offset, int64_t bytes, BdrvRequestFlags flags);
int bdrv_truncate(BdrvChild *child, int64_t offset, bool exact, PreallocMode prealloc,
                  BdrvRequestFlags flags, Error **errp);

/* ---- events (include/block.h; io/block-events.c) ---- */
/*
 * Report an event about bs (node: bs's node name, or its filename if it has
 * none) over [offset, offset + bytes); err is -errno or 0.  extra_json, if
 * not NULL, is appended inside the object (',"child":"c2"' style, already
 * escaped: build it with bdrv_json_escape).  Rate-limited; safe from any
 * thread; never blocks on I/O beyond the sink's own write.
 */
void bdrv_event(BlockDriverState *bs, const char *type, int64_t offset, int64_t bytes, int err,
                const char *extra_json);
/* s as a JSON string body (no quotes) into buf; truncates; returns buf. */
char *bdrv_json_escape(const char *s, char *buf, size_t len);

#endif
