/*
 * block.h - the block layer: node graph, drivers, and the request path.
 *
 * A BlockDriverState (node) is an instance of a BlockDriver (ops table) with
 * driver state (bs->opaque, drv->instance_size bytes) and children, each a
 * BdrvChild edge with a role: "file" (the protocol under a format),
 * "backing" (copy-on-write parent), or numbered "children.N" (quorum).
 * Nodes are reference counted; a child edge holds a reference.
 *
 * Opening: bdrv_open() takes a filename and/or an OptDict of dotted keys.
 * Without "driver" the format is probed from the first bytes of the file
 * (never for a backing file whose format the image records).  A node opened
 * from a probed raw format refuses writes to its first sector that would make
 * it probe as another format (-EPERM), as QEMU does.
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
 */
#ifndef UBLKD_BLOCK_H
#define UBLKD_BLOCK_H

#include <pthread.h>
#include <stdint.h>
#include "compiler.h"
#include "coroutine.h"
#include "error.h"
#include "iov.h"
#include "options.h"
#include "thread-slot.h"

typedef struct BlockDriver BlockDriver;
typedef struct BlockDriverState BlockDriverState;
typedef struct BdrvChild BdrvChild;
typedef struct BdrvTrackedRequest BdrvTrackedRequest;
typedef struct AioContext AioContext;

#define BDRV_SECTOR_BITS 9
#define BDRV_SECTOR_SIZE (1ULL << BDRV_SECTOR_BITS)
/* Largest request the byte API accepts (as QEMU: fits in int64 and in sectors). */
#define BDRV_MAX_LENGTH  (INT64_MAX & ~(int64_t)(BDRV_SECTOR_SIZE - 1))
#define BDRV_REQUEST_MAX_BYTES (1U << 30)
/* Bytes read for format probing. */
#define BLOCK_PROBE_BUF_SIZE 512

/* ---- open flags (bs->open_flags) ---- */
enum {
    BDRV_O_RDWR          = 1 << 1,
    BDRV_O_NOCACHE       = 1 << 2,   /* O_DIRECT on the file protocol */
    BDRV_O_NO_FLUSH      = 1 << 3,   /* cache=unsafe: flushes are no-ops */
    BDRV_O_PROTOCOL      = 1 << 4,   /* filename names a protocol node, no probing */
    BDRV_O_NO_BACKING    = 1 << 5,
    BDRV_O_COPY_ON_READ  = 1 << 6,
    BDRV_O_UNMAP         = 1 << 7,   /* discard=unmap (default ignore) */
    BDRV_O_WRITETHROUGH  = 1 << 8,   /* every write is FUA (cache=writethrough/directsync) */
    BDRV_O_CREAT_TEMP    = 1 << 9,
    BDRV_O_FORCE_SHARE   = 1 << 10,  /* force-share=on: read-only, take no image locks */
};
/* "none" (default for devices), "writeback", "writethrough", "directsync", "unsafe". */
int bdrv_parse_cache_mode(const char *mode, int *flags, Error **errp);

/* ---- request flags ---- */
typedef enum {
    BDRV_REQ_COPY_ON_READ   = 1 << 0,
    BDRV_REQ_ZERO_WRITE     = 1 << 1,   /* pwritev carries no data: write zeroes */
    BDRV_REQ_MAY_UNMAP      = 1 << 2,   /* zeroes may be done by unmapping */
    BDRV_REQ_FUA            = 1 << 4,
    BDRV_REQ_NO_FALLBACK    = 1 << 5,   /* zeroes: fail -ENOTSUP rather than write buffers */
    BDRV_REQ_SERIALISING    = 1 << 6,
    BDRV_REQ_PREFETCH       = 1 << 7,   /* copy-on-read only, no data to caller */
    BDRV_REQ_NO_SERIALISING = 1 << 8,
} BdrvRequestFlags;

/* ---- block status bits (QEMU's values) ---- */
#define BDRV_BLOCK_DATA         0x01   /* reads come from the file */
#define BDRV_BLOCK_ZERO         0x02   /* reads return zeros */
#define BDRV_BLOCK_OFFSET_VALID 0x04   /* *map is the offset in *file */
#define BDRV_BLOCK_RAW          0x08   /* pass-through: ask *file at *map */
#define BDRV_BLOCK_ALLOCATED    0x10   /* the content is decided by this layer */
#define BDRV_BLOCK_EOF          0x20   /* the range reaches the end of the image */
#define BDRV_BLOCK_RECURSE      0x40   /* ask *file too (it may know ZERO) */

typedef enum { BDRV_DETECT_ZEROES_OFF, BDRV_DETECT_ZEROES_ON, BDRV_DETECT_ZEROES_UNMAP } BdrvDetectZeroes;
typedef enum { PREALLOC_MODE_OFF, PREALLOC_MODE_METADATA, PREALLOC_MODE_FALLOC,
               PREALLOC_MODE_FULL } PreallocMode;

typedef enum {
    BDRV_CHILD_FILE,        /* "file": the protocol or image under a format/filter */
    BDRV_CHILD_BACKING,     /* "backing": read-only copy-on-write parent */
    BDRV_CHILD_NUMBERED,    /* "children.N" of quorum and the like */
    BDRV_CHILD_DATA,        /* "data-file" (qcow2 external data) */
} BdrvChildRole;

struct BdrvChild {
    BlockDriverState *bs;       /* the child node (holds a reference) */
    BlockDriverState *parent;
    char *name;                 /* "file", "backing", "children.0", ... */
    BdrvChildRole role;
    int index;                  /* N for numbered children, else -1 */
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

typedef struct BlockLimits {
    uint32_t request_alignment;    /* bytes; I/O is padded to this (>= 1) */
    uint64_t max_transfer;         /* bytes, 0 = no limit; split above it */
    uint32_t opt_transfer;
    uint32_t pdiscard_alignment;
    uint64_t max_pdiscard;         /* 0 = no limit */
    uint32_t pwrite_zeroes_alignment;
    uint64_t max_pwrite_zeroes;    /* 0 = no limit */
    size_t min_mem_alignment;      /* buffer alignment required (O_DIRECT) */
    size_t opt_mem_alignment;
    int max_iov;                   /* 0 = IOV_MAX */
    bool has_discard;              /* child can really unmap */
} BlockLimits;

/* Free-form key/value lines for `img info` ("Format specific information"). */
typedef struct ImageInfoEntry {
    char *key;
    char *value;
    bool is_number;                /* JSON output as a number, not a string */
    bool is_bool;
} ImageInfoEntry;
typedef struct ImageSpecificInfo {
    ImageInfoEntry *entries;
    int n, alloc;
} ImageSpecificInfo;
void image_info_add(ImageSpecificInfo *info, const char *key, const char *fmt, ...) PRINTF_FMT(3, 4);
void image_info_add_int(ImageSpecificInfo *info, const char *key, int64_t value);
void image_info_add_bool(ImageSpecificInfo *info, const char *key, bool value);
void image_info_free(ImageSpecificInfo *info);

typedef struct BlockDriverInfo {
    int cluster_size;              /* 0 if not applicable */
    bool is_dirty;
    int64_t vm_state_offset;
} BlockDriverInfo;

/* Result of `img check`, as qemu-img reports it. */
typedef enum { BDRV_FIX_LEAKS = 1, BDRV_FIX_ERRORS = 2 } BdrvCheckMode;
typedef struct BdrvCheckResult {
    int corruptions, leaks, check_errors;
    int corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    uint64_t total_clusters, allocated_clusters, fragmented_clusters, compressed_clusters;
} BdrvCheckResult;

/* Options accepted by `img create -f FMT -o ...` (NULL-name terminated). */
typedef struct CreateOptDesc {
    const char *name;
    const char *type;   /* "size", "bool", "string", "number" */
    const char *help;
    const char *def;
} CreateOptDesc;

struct BlockDriver {
    const char *format_name;
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

    int coroutine_fn (*co_preadv)(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
    int coroutine_fn (*co_pwritev)(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
    int coroutine_fn (*co_pwrite_zeroes)(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags);
    int coroutine_fn (*co_pdiscard)(BlockDriverState *bs, int64_t offset, int64_t bytes);
    int coroutine_fn (*co_flush_to_os)(BlockDriverState *bs);
    int coroutine_fn (*co_flush_to_disk)(BlockDriverState *bs);
    /* Return BDRV_BLOCK_* for [offset, offset+*pnum); *pnum <= bytes, > 0. */
    int coroutine_fn (*co_block_status)(BlockDriverState *bs, bool want_zero, int64_t offset,
                                        int64_t bytes, int64_t *pnum, int64_t *map,
                                        BlockDriverState **file);
    int coroutine_fn (*co_truncate)(BlockDriverState *bs, int64_t offset, bool exact,
                                    PreallocMode prealloc, BdrvRequestFlags flags, Error **errp);
    int coroutine_fn (*co_check)(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);
    /* Create an image; opts hold "size" and the format's -o options. */
    int coroutine_fn (*co_create)(const char *filename, OptDict *opts, Error **errp);
    const CreateOptDesc *create_opts;

    int64_t (*getlength)(BlockDriverState *bs);              /* bytes or -errno */
    int64_t (*get_allocated_file_size)(BlockDriverState *bs);
    int (*get_info)(BlockDriverState *bs, BlockDriverInfo *bdi);
    void (*get_specific_info)(BlockDriverState *bs, ImageSpecificInfo *info);
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
};

/* ---- driver registry ---- */
const BlockDriver *bdrv_find_format(const char *name);
/* Add a driver at run time (tests use this for in-memory drivers). */
void bdrv_register(const BlockDriver *drv);
/* Iterate: returns NULL after the last. */
const BlockDriver *bdrv_driver_at(int i);

/* ---- graph ---- */
/*
 * Open a node.  filename may be NULL (all in options), a path, or
 * "json:{...}".  options is consumed (freed) whatever the outcome.
 * Errors name the file and what is wrong with it.
 */
BlockDriverState *bdrv_open(const char *filename, OptDict *options, int flags, Error **errp);
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
 * Sets parent->file / parent->backing for those roles if still unset.
 * parent may be NULL: a root edge for a BlockBackend or a temporary user.
 */
BdrvChild *bdrv_attach_child(BlockDriverState *parent, BlockDriverState *child_bs,
                             const char *name, BdrvChildRole role, Error **errp);
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
/*
 * Make bs and the nodes under it that hold its data (file, data-file and
 * numbered children; not backing) read-only or read-write, inside a drained
 * section of bs (flushed first when going read-only).  All or nothing:
 * refused if a writer above keeps it read-write, or if a driver cannot
 * switch (the file protocol reopens its fd and takes or drops the write
 * lock bytes).
 */
int bdrv_reopen_set_read_only(BlockDriverState *bs, bool read_only, Error **errp);
/* Open bs's backing file (bs->backing_file, or "backing.*" options). */
int bdrv_open_backing(BlockDriverState *bs, OptDict *options, Error **errp);
void bdrv_ref(BlockDriverState *bs);
void bdrv_unref(BlockDriverState *bs);          /* closes at zero */
/* Recompute bs->bl from the driver and children (merge: max of alignments,
 * min of non-zero transfer limits). */
void bdrv_refresh_limits(BlockDriverState *bs, Error **errp);
/* Probe the format of filename (reads its first bytes). */
const BlockDriver *bdrv_probe_format(const char *filename, Error **errp);
/* The registered driver scoring highest for buf (NULL if none scores > 0). */
const BlockDriver *bdrv_probe_buf(const uint8_t *buf, int buf_size, const char *filename);
/* The node called node_name (user-given or "#blockN"), or NULL. */
BlockDriverState *bdrv_find_node(const char *node_name);
/* The child edge called name ("file", "backing", "children.0"...), or NULL. */
BdrvChild *bdrv_find_child(BlockDriverState *bs, const char *name);
int bdrv_create(const BlockDriver *drv, const char *filename, OptDict *opts, Error **errp);
int bdrv_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);
const char *bdrv_get_format_name(const BlockDriverState *bs);
int64_t bdrv_getlength(BlockDriverState *bs);
int64_t bdrv_get_allocated_file_size(BlockDriverState *bs);
int bdrv_get_info(BlockDriverState *bs, BlockDriverInfo *bdi);
int bdrv_has_zero_init(BlockDriverState *bs);
/* The node a filter chain forwards to (bs itself if not a filter). */
BlockDriverState *bdrv_skip_filters(BlockDriverState *bs);
BlockDriverState *bdrv_backing_bs(BlockDriverState *bs);  /* NULL if none */
/* Describe the graph as "driver=...,file.driver=..." dotted options. */
char *bdrv_graph_to_string(BlockDriverState *bs);

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
/* Status as seen from bs through its backing chain down to (excluding) base;
 * ALLOCATED is set if any layer above base allocates the range. */
int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs, BlockDriverState *base,
                                            int64_t offset, int64_t bytes, int64_t *pnum,
                                            int64_t *map, BlockDriverState **file, int *depth);
int coroutine_fn bdrv_co_is_allocated(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      int64_t *pnum);

/* Node-level request entry for a parent that has a BdrvChild-less handle
 * (the BlockBackend uses a BdrvChild of its own, role FILE). */

/* ---- drain ---- */
/*
 * A drained section of bs: bs, the nodes below it, and every node above any
 * of them are quiesced (new requests from root edges above wait before they
 * enter; requests that drivers issue on behalf of requests already in flight
 * go on), drivers' drain_begin run, and drained_begin returns once none of
 * those nodes has a request in flight.  Sections nest.  The graph changes
 * only inside them.  Main thread (or a coroutine of it): polls its loop, or
 * yields, while waiting.
 */
void bdrv_drained_begin(BlockDriverState *bs);
void bdrv_drained_end(BlockDriverState *bs);
void bdrv_drain(BlockDriverState *bs);          /* begin + end */
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
int bdrv_flush(BlockDriverState *bs);
int bdrv_truncate(BdrvChild *child, int64_t offset, bool exact, PreallocMode prealloc,
                  BdrvRequestFlags flags, Error **errp);
int bdrv_block_status_above(BlockDriverState *bs, BlockDriverState *base, int64_t offset,
                            int64_t bytes, int64_t *pnum, int64_t *map, BlockDriverState **file);

#endif
