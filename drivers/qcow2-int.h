/*
 * qcow2-int.h - the qcow2 format (QEMU's copy-on-write images): on-disk
 * layout and the driver state shared by drivers/qcow2*.c.  Nothing outside
 * drivers/qcow2*.c includes this.
 *
 * Layout (big-endian, docs/interop/qcow2.txt): a header in cluster 0 (72
 * bytes for version 2, header_length for version 3) followed by header
 * extensions; an L1 table of 8-byte entries, each naming an L2 table (one
 * cluster) whose entries (8 bytes, or 16 with extended L2: entry + subcluster
 * bitmap) map one guest cluster each to a host cluster, a compressed run of
 * sectors, or nothing / zeros; a refcount table whose entries name refcount
 * blocks (one cluster of 2^refcount_order-bit counters, one per host
 * cluster).
 *
 * Files: qcow2.c (ops table, open/close, reads, block status, info),
 * qcow2-header.c (header and extensions: parse and validate),
 * qcow2-cluster.c (guest offset -> host offset through L1/L2),
 * qcow2-refcount.c (refcount lookups), qcow2-compress.c (compressed
 * clusters: zlib raw deflate and zstd), qcow2-write.c (guest writes),
 * qcow2-alloc.c (host clusters and refcounts), qcow2-compress-write.c
 * (compressed writes), qcow2-snapshot.c (internal snapshots).
 */
#ifndef UBLKD_DRIVERS_QCOW2_INT_H
#define UBLKD_DRIVERS_QCOW2_INT_H

#include <endian.h>
#include <pthread.h>
#include <string.h>
#include "block-driver.h"
#include "meta-cache.h"

#define QCOW2_MAGIC               0x514649fbU   /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LENGTH    72
#define QCOW2_V3_HEADER_LENGTH    104           /* without the compression type byte */
#define QCOW2_MIN_CLUSTER_BITS    9
#define QCOW2_MAX_CLUSTER_BITS    21
/* QEMU 7.2's limits, so both tools open the same images. */
#define QCOW2_MAX_L1_BYTES        (32 * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES  (8 * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS       65536
#define QCOW2_SNAPSHOT_HEADER_MIN 40
#define QCOW2_MAX_BACKING_NAME    1023
#define QCOW2_MAX_BITMAPS         65535
#define QCOW2_MAX_BITMAP_DIR_SIZE (64 * 1024 * 1024)

/* Header field offsets. */
enum {
    QH_MAGIC = 0, QH_VERSION = 4, QH_BACKING_OFFSET = 8, QH_BACKING_SIZE = 16,
    QH_CLUSTER_BITS = 20, QH_SIZE = 24, QH_CRYPT_METHOD = 32, QH_L1_SIZE = 36,
    QH_L1_OFFSET = 40, QH_REFTABLE_OFFSET = 48, QH_REFTABLE_CLUSTERS = 56,
    QH_NB_SNAPSHOTS = 60, QH_SNAPSHOTS_OFFSET = 64, QH_INCOMPAT = 72, QH_COMPAT = 80,
    QH_AUTOCLEAR = 88, QH_REFCOUNT_ORDER = 96, QH_HEADER_LENGTH = 100,
    QH_COMPRESSION_TYPE = 104,
};

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1fULL
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ULL << 1)

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES  1
#define QCOW2_CRYPT_LUKS 2

/* Header extension types. */
#define QCOW2_EXT_END            0
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857U
#define QCOW2_EXT_CRYPTO         0x0537be77U
#define QCOW2_EXT_BITMAPS        0x23852875U
#define QCOW2_EXT_DATA_FILE      0x44415441U

/* L1/L2 entries. */
#define QCOW2_OFLAG_COPIED      (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED  (1ULL << 62)
#define QCOW2_OFLAG_ZERO        (1ULL << 0)
#define QCOW2_L1E_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_L2E_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_EXTL2_SUBCLUSTERS 32
#define QCOW2_L2_BITMAP_ALL_ALLOC 0xffffffffULL
/* L2 tables are cached in slices of this many bytes (or a cluster). */
#define QCOW2_L2_SLICE_BYTES    4096

/* Metadata the overlap check guards (QEMU's QCow2MetadataOverlap bits and
 * its overlap-check.* option names, in bit order). */
enum {
    QCOW2_OL_MAIN_HEADER = 1 << 0, QCOW2_OL_ACTIVE_L1 = 1 << 1, QCOW2_OL_ACTIVE_L2 = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE = 1 << 3, QCOW2_OL_REFCOUNT_BLOCK = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE = 1 << 5, QCOW2_OL_INACTIVE_L1 = 1 << 6,
    QCOW2_OL_INACTIVE_L2 = 1 << 7, QCOW2_OL_BITMAP_DIRECTORY = 1 << 8,
    QCOW2_OL_MAX_BITNR = 9,
    QCOW2_OL_CONSTANT = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 | QCOW2_OL_REFCOUNT_TABLE |
                        QCOW2_OL_SNAPSHOT_TABLE,
    QCOW2_OL_CACHED = QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_BLOCK |
                      QCOW2_OL_BITMAP_DIRECTORY | QCOW2_OL_INACTIVE_L1,
    QCOW2_OL_ALL = QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2,
};

/* What a guest subcluster maps to (QEMU's QCow2SubclusterType). */
typedef enum {
    QCOW2_SC_NORMAL,            /* data at the host offset */
    QCOW2_SC_COMPRESSED,        /* whole cluster, compressed */
    QCOW2_SC_ZERO_PLAIN,        /* reads zeros, no host cluster */
    QCOW2_SC_ZERO_ALLOC,        /* reads zeros, host cluster kept */
    QCOW2_SC_UNALLOCATED_PLAIN, /* backing file or zeros */
    QCOW2_SC_UNALLOCATED_ALLOC, /* ditto; the cluster has a host cluster */
    QCOW2_SC_INVALID,           /* contradictory entry: -EIO */
} Qcow2SubclusterType;

/* A header extension we do not know, kept to be written back unchanged. */
typedef struct Qcow2UnknownExt {
    uint32_t type, len;
    uint8_t *data;
    struct Qcow2UnknownExt *next;
} Qcow2UnknownExt;

/* One entry of the feature-name table (for messages). */
typedef struct Qcow2Feature {
    uint8_t type, bit;
    char name[47];
} Qcow2Feature;
enum { QCOW2_FEAT_INCOMPAT = 0, QCOW2_FEAT_COMPAT = 1, QCOW2_FEAT_AUTOCLEAR = 2 };

/* A buffer pair and decompression contexts for compressed clusters: made
 * on demand, kept in a free list, so reads allocate nothing once warm. */
typedef struct Qcow2Bounce {
    uint8_t *in, *out;          /* 2 clusters (a compressed cluster may span two) / 1 cluster */
    size_t in_len, out_len;     /* as allocated */
    bool plaintext;             /* an encrypted image's: not dumped, wiped when freed */
    void *zlib, *zstd;          /* z_stream *, ZSTD_DCtx * (lazily) */
    void *deflate, *zstd_c;     /* z_stream *, ZSTD_CCtx * for writes (lazily) */
    struct Qcow2Bounce *next;
} Qcow2Bounce;

/* Guest clusters [first, first + nb) being allocated by one request: their
 * data is being written and their L2 entries are not set yet.  On that
 * request's stack, linked under s->lock. */
typedef struct Qcow2Alloc {
    uint64_t first, nb;
    struct Qcow2Alloc *next;
} Qcow2Alloc;

/* An L1 table a resize replaced: lock-free readers may still hold it, so
 * it is freed at close (a grow happens a handful of times in an image's
 * life). */
typedef struct Qcow2RetiredL1 {
    uint64_t *table;
    struct Qcow2RetiredL1 *next;
} Qcow2RetiredL1;

/* Encryption state (qcow2-crypto.c), NULL for a plain image. */
typedef struct Qcow2Crypto Qcow2Crypto;

/* The parsed header (qcow2-header.c). */
typedef struct Qcow2Header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompat, compat, autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
} Qcow2Header;

typedef struct BDRVQcow2State {
    Qcow2Header h;
    uint32_t cluster_bits, cluster_size;
    uint32_t subcluster_bits, subcluster_size, subclusters_per_cluster;
    uint32_t l2_bits;                /* log2 of entries per L2 table */
    uint32_t l2_entry_size;          /* 8, 16 with extended L2 */
    uint32_t l2_slice_entries;       /* entries per cached slice */
    uint32_t refcount_block_bits;    /* log2 of refcounts per block */
    /* Compressed L2 entries: offset in the low csize_shift bits, then the
     * number of additional 512-byte sectors. */
    uint32_t csize_shift;
    uint64_t csize_mask, cluster_offset_mask;

    /* Host-endian copy of the active L1.  Lock-free readers load the size
     * (acquire) before the table; a resize stores the table before the size. */
    uint64_t *l1_table;
    uint32_t l1_size;
    Qcow2RetiredL1 *retired_l1;
    uint64_t *refcount_table;        /* host-endian */
    uint32_t refcount_table_size;    /* entries */

    MetaCache *l2_cache;             /* L2 slices */
    MetaCache *refcount_cache;       /* refcount blocks */
    CoMutex lock;                    /* metadata lock of both caches */

    BdrvChild *data_file;            /* bs->file, or the external data file */
    char *image_data_file;           /* name recorded in the header, or NULL */
    Qcow2Feature *features;
    int nb_features;
    Qcow2UnknownExt *unknown_exts;
    /* Bitmaps extension, when present. */
    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_size, bitmap_directory_offset;
    /* Crypto header extension, when present. */
    uint64_t crypto_header_offset, crypto_header_length;
    Qcow2Crypto *crypto;             /* crypt_method 1 or 2: the cipher (qcow2-crypto.c) */

    /* Metadata preallocation (QEMU's heuristic, asked once by block
     * status): most clusters of the file have a refcount, so allocated
     * clusters may be holes in the file that read as zeros. */
    int metadata_prealloc;           /* -1 not checked yet, else 0/1; atomic */

    pthread_mutex_t bounce_lock;
    Qcow2Bounce *bounce_free;

    /* Writing (qcow2-write.c, qcow2-alloc.c), under lock. */
    bool writable;
    uint64_t free_cluster_index;     /* where the search for free clusters starts */
    /* Where the next compressed cluster's bytes go (QEMU's free_byte_offset):
     * inside the host cluster the last one ended in, 0 for a fresh cluster. */
    uint64_t free_byte_offset;
    Qcow2Alloc *allocs;              /* allocations in flight */
    CoQueue alloc_wait;              /* writers waiting for one of them */
    bool corrupt_reported;
    uint64_t publish_gen;            /* L2 entries published so far (each sets depends_on_flush) */
    /* Metadata write-through rounds (qcow2-write.c), a group commit: one
     * runs at a time; a round that began at publish_gen >= a request's
     * publish covers it. */
    bool sync_running;
    uint64_t sync_done_gen;
    int sync_done_ret;
    CoQueue sync_wait;
    unsigned overlap_check;          /* QCOW2_OL_* bits: what qcow2_overlaps_metadata guards */
    bool discard_passthrough;        /* pass-discard-request: freed clusters discarded in the file */
    bool discard_other;              /* pass-discard-other: the old refcount table's clusters */
    bool write_through;              /* metadata-write-through: see qcow2-write.c */
    /* An L2 entry names external data-file clusters written since that file's
     * last flush (qcow2_l2_after_data): flush it before the next table
     * write-back. */
    bool data_file_unflushed;
    /* Whether the guest-visible content changed since open (atomic). */
    bool guest_changed;
    /* Internal snapshots (qcow2-snapshot.c): the table as read at open,
     * h.nb_snapshots entries; its size in the file.  snapshot_loaded: a
     * read-only open shows a snapshot (its L1 table is s->l1_table). */
    struct Qcow2Snapshot *snapshots;
    uint64_t snapshots_size;
    bool snapshot_loaded;
    /* Persistent bitmaps (qcow2-bitmap.c): the directory as loaded, and on
     * a writable open their data, recording writes. */
    struct Qcow2Bitmaps *bitmaps;
    bool bitmaps_writable;
} BDRVQcow2State;

/* Refcount i of a refcount block (or a slice of one), 2^order bits wide. */
static inline uint64_t qcow2_rc_get(const uint8_t *b, uint64_t i, uint32_t order)
{
    switch (order) {
    case 0: return (b[i / 8] >> (i % 8)) & 1;
    case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return b[i];
    case 4: { uint16_t v; memcpy(&v, b + i * 2, 2); return be16toh(v); }
    case 5: { uint32_t v; memcpy(&v, b + i * 4, 4); return be32toh(v); }
    default: { uint64_t v; memcpy(&v, b + i * 8, 8); return be64toh(v); }
    }
}

static inline void qcow2_rc_set(uint8_t *b, uint64_t i, uint32_t order, uint64_t v)
{
    switch (order) {
    case 0: b[i / 8] = (uint8_t)((b[i / 8] & ~(1 << (i % 8))) | (v << (i % 8))); break;
    case 1: b[i / 4] = (uint8_t)((b[i / 4] & ~(3 << (2 * (i % 4)))) | (v << (2 * (i % 4))));
        break;
    case 2: b[i / 2] = (uint8_t)((b[i / 2] & ~(15 << (4 * (i % 2)))) | (v << (4 * (i % 2))));
        break;
    case 3: b[i] = (uint8_t)v; break;
    case 4: { uint16_t x = htobe16((uint16_t)v); memcpy(b + i * 2, &x, 2); break; }
    case 5: { uint32_t x = htobe32((uint32_t)v); memcpy(b + i * 4, &x, 4); break; }
    default: { uint64_t x = htobe64(v); memcpy(b + i * 8, &x, 8); break; }
    }
}

static inline uint32_t qcow2_ld32(const uint8_t *p, size_t off)
{
    uint32_t v;
    memcpy(&v, p + off, 4);
    return be32toh(v);
}
static inline uint64_t qcow2_ld64(const uint8_t *p, size_t off)
{
    uint64_t v;
    memcpy(&v, p + off, 8);
    return be64toh(v);
}
static inline uint16_t qcow2_ld16(const uint8_t *p, size_t off)
{
    uint16_t v;
    memcpy(&v, p + off, 2);
    return be16toh(v);
}
/* Big-endian stores into on-disk structures being built (header,
 * header extensions, bitmap directory). */
static inline void qcow2_st16(uint8_t *p, size_t off, uint16_t v)
{
    v = htobe16(v);
    memcpy(p + off, &v, 2);
}
static inline void qcow2_st32(uint8_t *p, size_t off, uint32_t v)
{
    v = htobe32(v);
    memcpy(p + off, &v, 4);
}
static inline void qcow2_st64(uint8_t *p, size_t off, uint64_t v)
{
    v = htobe64(v);
    memcpy(p + off, &v, 8);
}

static inline bool qcow2_has_data_file(const BDRVQcow2State *s)
{
    return s->h.incompat & QCOW2_INCOMPAT_DATA_FILE;
}
static inline bool qcow2_data_file_is_raw(const BDRVQcow2State *s)
{
    return s->h.autoclear & QCOW2_AUTOCLEAR_DATA_RAW;
}
static inline bool qcow2_has_subclusters(const BDRVQcow2State *s)
{
    return s->h.incompat & QCOW2_INCOMPAT_EXTL2;
}
static inline uint64_t qcow2_offset_into_cluster(const BDRVQcow2State *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}
static inline uint64_t qcow2_start_of_cluster(const BDRVQcow2State *s, uint64_t off)
{
    return off & ~(uint64_t)(s->cluster_size - 1);
}

/* "qcow2: <file>" for messages: the image's file name. */
const char *qcow2_image_name(BlockDriverState *bs);

/* qcow2-header.c: read cluster 0's header and extensions into s, checking
 * every field against QEMU 7.2's rules and the file's size.  Sets
 * bs->backing_file/backing_format and s->image_data_file. */
int qcow2_read_header(BlockDriverState *bs, int64_t file_len, int flags, Error **errp);
void qcow2_free_header_state(BDRVQcow2State *s);

/* qcow2-header-write.c: rewrite cluster 0 as QEMU's qcow2_update_header
 * does (one write, then a flush; -ENOSPC, nothing written, if it does not
 * fit), keeping the recorded backing or (change) recording file/fmt; the
 * change_backing_file and make_empty ops. */
int coroutine_fn qcow2_update_header(BlockDriverState *bs);
int coroutine_fn qcow2_update_header_locked(BlockDriverState *bs, bool change,
                                            const char *file, const char *fmt);
int coroutine_fn qcow2_co_change_backing_file(BlockDriverState *bs, const char *file,
                                              const char *fmt);
int coroutine_fn qcow2_co_make_empty(BlockDriverState *bs);
static inline void qcow2_note_guest_change(BDRVQcow2State *s)
{
    if (!__atomic_load_n(&s->guest_changed, __ATOMIC_RELAXED)) {
        __atomic_store_n(&s->guest_changed, true, __ATOMIC_RELEASE);
    }
}

/* qcow2-bitmap.c: persistent dirty bitmaps.  qcow2_bitmaps_open checks the
 * directory and loads the bitmaps (every open) and, writable, marks them
 * in use; qcow2_bitmaps_close stores them (clearing in_use)
 * and frees the state.  qcow2_bitmaps_note records a guest write, zero
 * write or discard in the enabled bitmaps: lock-free, no allocation. */
int qcow2_bitmaps_open(BlockDriverState *bs, int flags, Error **errp);
void qcow2_bitmaps_close(BlockDriverState *bs);
void qcow2_bitmaps_record(BDRVQcow2State *s, uint64_t offset, uint64_t bytes);
static inline void qcow2_bitmaps_note(BDRVQcow2State *s, int64_t offset, int64_t bytes)
{
    if (s->bitmaps_writable && bytes > 0) {
        qcow2_bitmaps_record(s, (uint64_t)offset, (uint64_t)bytes);
    }
}
/* The note_discard op: qcow2_bitmaps_note of a discard request. */
void qcow2_note_discard(BlockDriverState *bs, int64_t offset, int64_t bytes);
int qcow2_bitmaps_truncate_check(BlockDriverState *bs, Error **errp);
int qcow2_bitmaps_truncate(BlockDriverState *bs, uint64_t size);
void qcow2_bitmaps_info(BlockDriverState *bs, ImageSpecificInfo *info);
int coroutine_fn qcow2_bitmap_op(BlockDriverState *bs, const BdrvBitmapOp *op, Error **errp);
int qcow2_bitmap_list(BlockDriverState *bs, BdrvBitmapInfo **list, size_t *nb);

/* qcow2-cluster.c: what [offset, offset + *bytes) maps to, up to the end of
 * the L2 slice; shortens *bytes to the run of subclusters of the same type
 * (and, for data, contiguous host offsets).  *host is the host offset for
 * NORMAL, ZERO_ALLOC and UNALLOCATED_ALLOC, the compressed L2 entry for
 * COMPRESSED.  -errno on I/O errors or corrupt entries. */
int coroutine_fn qcow2_get_host_offset(BlockDriverState *bs, uint64_t offset, uint64_t *bytes,
                                       uint64_t *host, Qcow2SubclusterType *type);
/* The same, also cutting the run where the COPIED flag changes; *copied is
 * the first cluster's flag (in-place writes need it set). */
int coroutine_fn qcow2_get_host_offset_copied(BlockDriverState *bs, uint64_t offset,
                                              uint64_t *bytes, uint64_t *host,
                                              Qcow2SubclusterType *type, bool *copied);

/* qcow2-alloc.c: QEMU's qcow2_refcount_metadata_size - refcount blocks (and in
 * *table, if not NULL, refcount table clusters) that cover `clusters` clusters
 * and themselves; generous adds room as QEMU's refcount growth does. */
uint64_t qcow2_refblocks_needed(uint64_t clusters, uint64_t cs, uint32_t order, bool generous,
                                uint64_t *table);

/* qcow2-alloc.c, s->lock held: host clusters and their refcounts. */
int64_t coroutine_fn qcow2_alloc_clusters(BlockDriverState *bs, uint64_t size);
int coroutine_fn qcow2_update_refcount(BlockDriverState *bs, uint64_t offset, uint64_t length,
                                       bool decrease);
int coroutine_fn qcow2_l2_allocate(BlockDriverState *bs, uint64_t l1_index);
/* size (1 .. cluster_size) bytes for a compressed cluster, packed after the
 * previous one (QEMU's qcow2_alloc_bytes): every host cluster they touch
 * gains a reference.  The host offset, or -errno. */
int64_t coroutine_fn qcow2_alloc_bytes(BlockDriverState *bs, uint64_t size);
/* Whether [offset, offset + len) of the image file holds metadata other
 * than the table at `self` (0: none); if so the image is marked corrupt
 * and the caller fails its request (QEMU's overlap check, against the
 * header, the L1 and refcount tables, and every refcount block and L2
 * table they point at).  Before every write of data to new clusters and
 * every change of an L2 table or refcount block. */
bool coroutine_fn qcow2_overlaps_metadata(BlockDriverState *bs, uint64_t offset, uint64_t len,
                                          uint64_t self);
int qcow2_cache_check_write(void *opaque, int64_t offset, size_t len);
int coroutine_fn qcow2_write_header_field(BlockDriverState *bs, size_t off, uint64_t v);
/* Metadata found corrupt (msg says what and where): logged once; on a
 * writable image the corrupt bit is set in the header, as QEMU's
 * qcow2_signal_corruption does, so no one writes the image until it is
 * checked (img check -r all clears the bit). */
void coroutine_fn qcow2_signal_corruption(BlockDriverState *bs, const char *msg);

/* Store L2 entry i of a slice (s->lock held, slice referenced): atomic,
 * for the readers that look entries up without the lock. */
static inline void qcow2_set_l2_entry(BDRVQcow2State *s, uint64_t *slice, uint32_t i, uint64_t e)
{
    __atomic_store_n(&slice[i * (s->l2_entry_size / 8)], htobe64(e), __ATOMIC_RELEASE);
}
static inline void qcow2_set_l2_bitmap(BDRVQcow2State *s, uint64_t *slice, uint32_t i,
                                       uint64_t bitmap)
{
    if (qcow2_has_subclusters(s)) {
        __atomic_store_n(&slice[i * 2 + 1], htobe64(bitmap), __ATOMIC_RELEASE);
    }
}

/* qcow2-write.c; the helpers run with s->lock held.  An allocating write:
 * wait while qcow2_alloc_overlaps, qcow2_mark_dirty, get the slice
 * (qcow2_l2_slice_for_write), allocate, link a Qcow2Alloc into s->allocs,
 * drop the lock for the data, take it again, qcow2_alloc_end, then
 * qcow2_l2_after_refcounts and qcow2_l2_after_data before the new entries,
 * and qcow2_free_old_entry for what they replaced once the L2 cache is
 * flushed. */
int coroutine_fn qcow2_mark_dirty(BlockDriverState *bs);
int coroutine_fn qcow2_l2_after_refcounts(BDRVQcow2State *s);
void qcow2_l2_after_data(BDRVQcow2State *s);
bool qcow2_alloc_overlaps(BDRVQcow2State *s, uint64_t first, uint64_t nb);
void qcow2_alloc_end(BDRVQcow2State *s, Qcow2Alloc *alloc);
/* The L2 slice (referenced; meta_cache_put it) holding the entry of the
 * cluster at guest offset, its L2 table made if there was none; *in_slice
 * is the entry's index in it. */
int coroutine_fn qcow2_l2_slice_for_write(BlockDriverState *bs, uint64_t offset,
                                          uint64_t **slice, uint32_t *in_slice);
/* Drop the references L2 entry e held (its cluster, or its compressed sectors). */
int coroutine_fn qcow2_free_old_entry(BlockDriverState *bs, uint64_t e);
int coroutine_fn qcow2_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn qcow2_co_flush_to_os(BlockDriverState *bs);
int coroutine_fn qcow2_mark_clean(BlockDriverState *bs);
int coroutine_fn qcow2_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                        BdrvRequestFlags flags);
int coroutine_fn qcow2_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes);
/* Whole clusters become unallocated (they read from the backing file),
 * whatever the version and backing (QEMU's full_discard, for make_empty). */
int coroutine_fn qcow2_discard_full(BlockDriverState *bs, uint64_t offset, uint64_t bytes);
int coroutine_fn qcow2_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);

/* Zero whole clusters [offset, offset + bytes) (unmap: give up their host
 * clusters too); takes s->lock.  For a resize, where the range may lie past
 * the size (qcow2_discard_full frees clusters past a shrink's new end). */
int coroutine_fn qcow2_zero_clusters(BlockDriverState *bs, uint64_t offset, uint64_t bytes,
                                     bool unmap);

/* qcow2-resize.c: the co_truncate op (QEMU 7.2's qcow2_co_truncate, except
 * that a shrink refuses to drop data: see there). */
int coroutine_fn qcow2_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                   PreallocMode prealloc, BdrvRequestFlags flags, Error **errp);

/* qcow2-snapshot.c: copy the active L2 table of l1_index if a snapshot
 * shares it (its L1 entry lacks COPIED), before changing it; s->lock held. */
int coroutine_fn qcow2_l2_cow(BlockDriverState *bs, uint64_t l1_index);
/* The snapshot table, at open (QEMU's limits and messages); freed at close.
 * Then, with options load-snapshot-id / -name (read-only), that snapshot
 * replaces the active L1 table and size. */
int qcow2_read_snapshots(BlockDriverState *bs, Error **errp);
int coroutine_fn qcow2_snapshot_table_rewrite(BlockDriverState *bs, uint32_t n);
int qcow2_load_snapshot_opts(BlockDriverState *bs, OptDict *options, int flags, Error **errp);
void qcow2_free_snapshots(BDRVQcow2State *s);
/* What of the snapshot table and the snapshots' L1 tables (ol: QCOW2_OL_*
 * bits) [offset, offset + len) overlaps, or NULL (qcow2_overlaps_metadata). */
const char *qcow2_snapshot_overlap(BDRVQcow2State *s, unsigned ol, uint64_t offset, uint64_t len);
struct BdrvSnapshotInfo;
int qcow2_snapshot_list(BlockDriverState *bs, struct BdrvSnapshotInfo **list);
int coroutine_fn qcow2_co_snapshot_create(BlockDriverState *bs, struct BdrvSnapshotInfo *sn,
                                          Error **errp);
int coroutine_fn qcow2_co_snapshot_goto(BlockDriverState *bs, const char *id_or_name,
                                        Error **errp);
int coroutine_fn qcow2_co_snapshot_delete(BlockDriverState *bs, const char *id,
                                          const char *name, Error **errp);

/* qcow2-refcount.c */
int coroutine_fn qcow2_get_refcount(BlockDriverState *bs, uint64_t cluster_index,
                                    uint64_t *refcount);
int coroutine_fn qcow2_detect_metadata_preallocation(BlockDriverState *bs);

/* qcow2-compress.c: decompress the cluster named by compressed L2 entry l2e
 * into b->out (cluster_size bytes).  Bounces come from qcow2_bounce_get
 * (NULL: out of memory) and go back with qcow2_bounce_put. */
int coroutine_fn qcow2_read_compressed(BlockDriverState *bs, uint64_t l2e, Qcow2Bounce *b);
Qcow2Bounce *qcow2_bounce_get(BDRVQcow2State *s);
void qcow2_bounce_put(BDRVQcow2State *s, Qcow2Bounce *b);
void qcow2_bounce_free_all(BDRVQcow2State *s);

/* qcow2-check.c: `img check` (QEMU's qcow2_co_check); the _locked variant
 * with s->lock held, for the repair of a dirty image at open. */
int coroutine_fn qcow2_co_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);
int coroutine_fn qcow2_check_locked(BlockDriverState *bs, BdrvCheckResult *res,
                                    BdrvCheckMode fix);
/* qcow2-check-repair.c: clear the corrupt bit (after a clean repair). */
int coroutine_fn qcow2_mark_consistent(BlockDriverState *bs);

/* qcow2-compress-write.c: the co_pwritev_compressed op; compression
 * contexts of a bounce are freed with qcow2_bounce_free_compressors. */
int coroutine_fn qcow2_co_pwritev_compressed(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                             IOVector *qiov, size_t qiov_offset);
void qcow2_bounce_free_compressors(Qcow2Bounce *b);

/* qcow2-header-write.c: QEMU 7.2's feature name table extension (8 entries
 * of 48 bytes), the same in every header it writes. */
#define QCOW2_FEATURE_TABLE_BYTES (8 * 48)
size_t qcow2_feature_table(uint8_t *out);

/* qcow2-crypto.c: open the encryption of an image whose crypt_method is
 * set (encrypt.key-secret from options; with BDRV_O_NO_IO the key may be
 * missing, and I/O then fails -ENOKEY); 0 for a plain image.  Data is
 * decrypted in place after a read of `bytes` at host (guest: the guest
 * offset, for legacy AES's IVs); writes go through qcow2_crypto_pwritev
 * (a bounce: the caller's buffer is not changed) or, for the driver's own
 * buffers, qcow2_crypto_encrypt_buf in place. */
int qcow2_crypto_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp);
void qcow2_crypto_close(BDRVQcow2State *s);
int qcow2_crypto_decrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest, IOVector *qiov,
                         size_t qiov_offset, uint64_t bytes);
int qcow2_crypto_encrypt_buf(BDRVQcow2State *s, uint64_t host, uint64_t guest, uint8_t *buf,
                             uint64_t bytes);
int coroutine_fn qcow2_crypto_pwritev(BlockDriverState *bs, uint64_t host, uint64_t guest,
                                      uint64_t bytes, IOVector *qiov, size_t qiov_offset);
void qcow2_crypto_info(BDRVQcow2State *s, ImageSpecificInfo *info);
/* qcow2-crypto.c: amend's encrypt.* options (LUKS keyslots, as qemu-img 7.2). */
int coroutine_fn qcow2_crypto_amend(BlockDriverState *bs, OptDict *opts, bool force,
                                    Error **errp);
/* qcow2-crypto.c: the LUKS area for a new image (create), from the
 * encrypt.* options; *area NULL when no encryption was asked for. */
int qcow2_crypto_create_area(OptDict *opts, uint8_t **area, size_t *len, Error **errp);
/* qcow2-amend.c: the co_amend op (QEMU 7.2's qcow2_amend_options). */
int coroutine_fn qcow2_co_amend(BlockDriverState *bs, OptDict *opts, BdrvAmendStatusCB *cb,
                                void *opaque, bool force, Error **errp);
extern const CreateOptDesc qcow2_amend_opts[];

/* qcow2-create.c */
int coroutine_fn qcow2_co_create(const char *filename, OptDict *opts, Error **errp);
/* qcow2-measure.c: `img measure -O qcow2` (qemu-img's figures) and the room
 * this image's persistent bitmaps would take in another. */
int qcow2_measure(OptDict *opts, BlockDriverState *in_bs, BlockMeasureInfo *info, Error **errp);
int qcow2_bitmaps_size(BlockDriverState *bs, uint64_t cluster_size, uint64_t *size);
extern const CreateOptDesc qcow2_create_opts[];

#endif
