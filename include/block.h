/*
 * block.h - the block layer as its users see it (ublk/, tools/): open a
 * graph of nodes, ask a node about itself, check and create images.
 *
 * A BlockDriverState (node) is an instance of a BlockDriver (a format such as
 * vdi or raw, a protocol such as file or null, a filter such as blkdebug).
 * Both are opaque here: users hold pointers and call the getters below.
 * Requests go through a BlockBackend (block-backend.h).  Drivers, and the
 * block layer itself, use the driver API in block-driver.h, which no file in
 * ublk/ or tools/ includes (`make check-layering`, run by check-unit).
 *
 * Opening: bdrv_open() takes a filename and/or an OptDict of dotted keys.
 * Without "driver" the format is probed from the first bytes of the file
 * (never for a backing file whose format the image records).  A filename
 * with a protocol prefix ("null-co://", "file:/path") opens that protocol;
 * a plain path is a file.
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

typedef struct BlockDriver BlockDriver;
typedef struct BlockDriverState BlockDriverState;
typedef struct BdrvChild BdrvChild;
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
    BDRV_O_CHECK         = 1 << 11,  /* opened by img check: no repair on open, a corrupt
                                        image opens read-write to be repaired */
    BDRV_O_SHARE_WRITE   = 1 << 12,  /* others may write and resize the image meanwhile
                                      * (qemu-img's readers; a format still unshares
                                      * writes to its metadata) */
    BDRV_O_NO_IO         = 1 << 13,  /* img info: no guest data is read or written, so an
                                      * encrypted image opens without its key */
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
    /* pwritev: store the data compressed (whole clusters of a format that
     * can, as qcow2; -ENOTSUP elsewhere).  A zero write ignores it. */
    BDRV_REQ_WRITE_COMPRESSED = 1 << 9,
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
    char *human;                   /* set: value is JSON text, human the lines after "key:" */
    bool nested;                   /* key "group.name" is "name" in a sub-dictionary "group"
                                    * (qemu-img nests encrypt.*); otherwise a dot is just a dot */
} ImageInfoEntry;
typedef struct ImageSpecificInfo {
    ImageInfoEntry *entries;
    int n, alloc;
} ImageSpecificInfo;
void image_info_add(ImageSpecificInfo *info, const char *key, const char *fmt, ...) PRINTF_FMT(3, 4);
void image_info_add_int(ImageSpecificInfo *info, const char *key, int64_t value);
void image_info_add_bool(ImageSpecificInfo *info, const char *key, bool value);
void image_info_add_json(ImageSpecificInfo *info, const char *key, const char *json,
                         const char *human);
void image_info_free(ImageSpecificInfo *info);

/* An `img bitmap` action (bdrv_bitmap_op). */
typedef enum {
    BDRV_BITMAP_ADD, BDRV_BITMAP_REMOVE, BDRV_BITMAP_CLEAR, BDRV_BITMAP_ENABLE,
    BDRV_BITMAP_DISABLE, BDRV_BITMAP_MERGE,
} BdrvBitmapOpType;
typedef struct BdrvBitmapOp {
    BdrvBitmapOpType type;
    const char *name;
    bool has_granularity;          /* ADD */
    uint64_t granularity;
    bool disabled;                 /* ADD: created not recording writes */
    struct BlockDriverState *src;  /* MERGE: the source's image (may be bs) */
    const char *src_name;
} BdrvBitmapOp;
/* bs's driver's bitmap_op; without one, qemu-img's messages for a format
 * without persistent bitmaps. */
int bdrv_bitmap_op(struct BlockDriverState *bs, const BdrvBitmapOp *op, Error **errp);
/* One persistent bitmap as bdrv_bitmap_list reports it. */
typedef struct BdrvBitmapInfo {
    char *name;
    uint64_t granularity;
    bool enabled;                  /* records writes (qcow2: the auto flag) */
    bool inconsistent;             /* left in use: its bits cannot be read */
} BdrvBitmapInfo;
/* bs's persistent bitmaps in the image's order (*list: free with
 * bdrv_bitmap_list_free); -ENOTSUP when bs's format (or this image's
 * version) cannot have persistent bitmaps, as QEMU's
 * bdrv_supports_persistent_dirty_bitmap. */
int bdrv_bitmap_list(struct BlockDriverState *bs, BdrvBitmapInfo **list, size_t *nb);
void bdrv_bitmap_list_free(BdrvBitmapInfo *list, size_t nb);

typedef struct BlockDriverInfo {
    int cluster_size;              /* 0 if not applicable */
    bool is_dirty;
    bool encrypted;                /* img info's "encrypted: yes" */
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

/* ---- drivers ---- */
const BlockDriver *bdrv_find_format(const char *name);
/* Whether filename names a protocol other than file ("rbd:pool/img",
 * "nbd://host/exp"): there is no path to check or make absolute. */
bool bdrv_is_protocol_filename(const char *filename);
/* Iterate: returns NULL after the last. */
const BlockDriver *bdrv_driver_at(int i);
const char *bdrv_driver_name(const BlockDriver *drv);
/* Options of `img create -f FMT -o ...` (NULL-name terminated), or NULL. */
const CreateOptDesc *bdrv_driver_create_opts(const BlockDriver *drv);
bool bdrv_driver_can_create(const BlockDriver *drv);
/* Create options of the protocol that would hold `filename` (the file
 * protocol's preallocation, ...), which `img create` of any format also
 * takes, as qemu-img does; NULL if none. */
const CreateOptDesc *bdrv_protocol_create_opts(const char *filename);
bool bdrv_driver_supports_backing(const BlockDriver *drv);
/* The format can store compressed clusters (BDRV_REQ_WRITE_COMPRESSED). */
bool bdrv_driver_supports_compression(const BlockDriver *drv);

/* ---- graph ---- */
/*
 * Open a node.  filename may be NULL (all in options), a path, a protocol
 * name ("null-co://"), or "json:{...}".  options is consumed (freed)
 * whatever the outcome.  Errors name the file and what is wrong with it.
 */
BlockDriverState *bdrv_open(const char *filename, OptDict *options, int flags, Error **errp);
void bdrv_ref(BlockDriverState *bs);
void bdrv_unref(BlockDriverState *bs);          /* closes at zero */
/*
 * Make bs and the nodes under it that hold its data (file, data-file and
 * numbered children; not backing) read-only or read-write, inside a drained
 * section of bs (flushed first when going read-only).  All or nothing:
 * refused if a writer above keeps it read-write, or if a driver cannot
 * switch (the file protocol reopens its fd and takes or drops the write
 * lock bytes).
 */
int bdrv_reopen_set_read_only(BlockDriverState *bs, bool read_only, Error **errp);
/* Probe the format of filename (reads its first bytes). */
const BlockDriver *bdrv_probe_format(const char *filename, Error **errp);
/* The node called node_name (user-given or "#blockN"), or NULL. */
BlockDriverState *bdrv_find_node(const char *node_name);
int bdrv_create(const BlockDriver *drv, const char *filename, OptDict *opts, Error **errp);
/*
 * qemu-img measure: the file size an image of format drv, made with opts
 * ("size" and drv's create options, checked by the caller), needs to hold
 * in_bs's data (NULL: an empty image of opts' size).  required counts the
 * clusters in_bs has data in, fully_allocated every cluster; bitmaps (with
 * has_bitmaps) what in_bs's persistent bitmaps would take in it.
 */
typedef struct BlockMeasureInfo {
    uint64_t required, fully_allocated;
    bool has_bitmaps;
    uint64_t bitmaps;
} BlockMeasureInfo;
int bdrv_measure(const BlockDriver *drv, OptDict *opts, BlockDriverState *in_bs,
                 BlockMeasureInfo *info, Error **errp);
int bdrv_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);
/*
 * Record file (NULL: none) and fmt as bs's backing file in its metadata
 * (QEMU's bdrv_change_backing_file), bs drained meanwhile; the open backing
 * child is not replaced.  require: a file needs a fmt (-EINVAL without).
 * -ENOTSUP for formats without backing files, -ENOSPC when the header has
 * no room.  On success bdrv_get_backing_filename/format say the new ones.
 */
int bdrv_change_backing_file(BlockDriverState *bs, const char *file, const char *fmt,
                             bool require);
/* Progress of bdrv_amend_options: offset of total units done. */
typedef void BdrvAmendStatusCB(BlockDriverState *bs, int64_t offset, int64_t total, void *opaque);
/* Change the image's format options in place (QEMU's bdrv_amend_options,
 * for img amend); bs drained meanwhile.  -ENOTSUP (errp set) for formats
 * without it. */
int bdrv_amend_options(BlockDriverState *bs, OptDict *opts, BdrvAmendStatusCB *cb, void *opaque,
                       bool force, Error **errp);
/* Options `img amend -f FMT -o` takes (NULL-name terminated), or NULL. */
const CreateOptDesc *bdrv_driver_amend_opts(const BlockDriver *drv);
/* Empty bs so it reads as its backing file (QEMU's bdrv_make_empty), bs
 * drained meanwhile; -ENOTSUP if its format cannot. */
int bdrv_make_empty(BlockDriverState *bs);

/* ---- numbered children of a live graph (quorum's children.N) ---- */
typedef enum {
    BDRV_CHILD_REPLACE,     /* child index gets a new node */
    BDRV_CHILD_ADD,         /* a new child, numbered after the last (index -1 or the count) */
    BDRV_CHILD_REMOVE,      /* child index goes; the ones after it move down by one */
} BdrvChildChange;
/*
 * The topmost node under root (root included, pre-order) whose driver can
 * change its numbered children while requests run, and in prefix the
 * option key prefix that leads to it from root ("" for root, "file." for a
 * raw over it).  NULL if there is none.
 */
BlockDriverState *bdrv_find_child_changer(BlockDriverState *root, char *prefix, size_t len);
/*
 * Replace, add or remove a numbered child of bs on a live graph, on the main
 * thread (in a coroutine or not).  options (consumed; NULL for remove) open
 * the new node as bs's children.N.* would at open, with the flags bs gives
 * its children: relative file names are the calling process's.  The driver
 * decides what the change means (quorum: checks the threshold against the
 * new count, rebuilds the new child from the others in the background).
 * Returns the index of the child changed, or -errno with errp set (nothing
 * changed).
 */
int bdrv_change_child(BlockDriverState *bs, BdrvChildChange op, int index, OptDict *options,
                      Error **errp);
/* How many numbered children (children.N) bs has. */
int bdrv_numbered_children(BlockDriverState *bs);
/* Bit i set: child i's data is not complete yet (rebuilding, waiting to be,
 * or a rebuild failed), so it does not vote everywhere.  0 for drivers
 * without numbered children. */
uint32_t bdrv_incomplete_children(BlockDriverState *bs);

/* ---- what a node says about itself ---- */
const char *bdrv_get_format_name(const BlockDriverState *bs);
const char *bdrv_get_node_name(const BlockDriverState *bs);
/* What the user named (the file path for protocols, "" if nothing). */
const char *bdrv_get_filename(const BlockDriverState *bs);
/* As recorded in the image ("" if none). */
const char *bdrv_get_backing_filename(const BlockDriverState *bs);
const char *bdrv_get_backing_format(const BlockDriverState *bs);
/* The merged limits of the node (valid while bs is). */
const BlockLimits *bdrv_get_limits(const BlockDriverState *bs);
bool bdrv_is_read_only(const BlockDriverState *bs);
int64_t bdrv_getlength(BlockDriverState *bs);
/* Whether a truncate of bs can reach a driver that resizes: bs's own, or
 * through filters the one below.  False names the node whose format has no
 * resize (*which, may be NULL), so a caller can refuse before it changes
 * anything else.  A driver may still refuse a particular resize (raw with
 * a fixed size=). */
bool bdrv_can_truncate(BlockDriverState *bs, BlockDriverState **which);
int64_t bdrv_get_allocated_file_size(BlockDriverState *bs);
int bdrv_get_info(BlockDriverState *bs, BlockDriverInfo *bdi);
/* Format-specific lines for `img info`; info stays empty if the driver has
 * none.  Free with image_info_free. */
void bdrv_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info);
/* Every node's run-time counters in the graph under bs (see get_counters in
 * block-driver.h), keys prefixed with the path of child edges from bs
 * ("file/children.1.errors"; none for bs's own).  Free with image_info_free. */
void bdrv_get_counters(BlockDriverState *bs, ImageSpecificInfo *info);
int bdrv_has_zero_init(BlockDriverState *bs);
/* Whether writes with BDRV_REQ_WRITE_COMPRESSED can succeed on bs (its
 * format stores compressed clusters; filters do not pass them on). */
bool bdrv_supports_compressed_writes(BlockDriverState *bs);
/* The node a filter chain forwards to (bs itself if not a filter). */
BlockDriverState *bdrv_skip_filters(BlockDriverState *bs);
BlockDriverState *bdrv_backing_bs(BlockDriverState *bs);  /* NULL if none */
/* Describe the graph as "driver=...,file.driver=..." dotted options. */
char *bdrv_graph_to_string(BlockDriverState *bs);
/* Zero copy (io/block-io-fixed.c).  Does a node of bs's graph declare that it
 * must see the bytes of every request (needs_mapped_data)?  Then registered
 * buffers would bounce on every request, and asking for them is a loss. */
bool bdrv_graph_needs_mapped_data(BlockDriverState *bs);
/* Requests that held registered-buffer references and went through a mapped
 * bounce because a layer had to see their bytes (all threads, ever). */
uint64_t bdrv_mapped_bounce_count(void);

/* ---- block status (coroutine or not) ---- */
/* Status as seen from bs through its backing chain down to (excluding) base;
 * ALLOCATED is set if any layer above base allocates the range. */
int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs, BlockDriverState *base,
                                            int64_t offset, int64_t bytes, int64_t *pnum,
                                            int64_t *map, BlockDriverState **file, int *depth);
int bdrv_block_status_above(BlockDriverState *bs, BlockDriverState *base, int64_t offset,
                            int64_t bytes, int64_t *pnum, int64_t *map, BlockDriverState **file);

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
int bdrv_flush(BlockDriverState *bs);

/* ---- events (io/block-events.c) ---- */
/*
 * Things a driver finds that the user must hear about although no request
 * fails with them (quorum's QUORUM_REPORT_BAD: a child returned wrong data
 * and was outvoted).  Each event is one JSON object on one line:
 *   {"type":"QUORUM_REPORT_BAD","node":"c1","offset":4096,"length":512,
 *    "error":"Input/output error","errno":5}
 * (error/errno only when there is one; extra fields per type).  The daemon
 * sends them to its device log; other programs get them on stderr unless they
 * set a sink.  Floods are cut to BDRV_EVENTS_PER_SEC per type and second;
 * the next event let through is preceded by
 *   {"type":"EVENTS_SUPPRESSED","event":"QUORUM_REPORT_BAD","count":N}.
 * The sink is called from any thread (queue threads), one line at a time.
 */
#define BDRV_EVENTS_PER_SEC 20
typedef void BdrvEventSink(const char *json_line, void *opaque);
void bdrv_set_event_sink(BdrvEventSink *sink, void *opaque);
/* Report the counts cut so far now (at exit, or from a timer: a flood that
 * stops would otherwise report its count only with the next event). */
void bdrv_event_flush(void);
/* Events of every type emitted and suppressed since start (for `list`). */
void bdrv_event_totals(uint64_t *emitted, uint64_t *suppressed);

#endif
