/*
 * qcow2-header.c - the qcow2 header and its extensions: parse and validate.
 *
 * Every field is checked with its own message naming the image, the field
 * and the value.  The checks are QEMU 7.2's (qcow2_do_open and
 * qcow2_read_extensions), so both tools open the same images, plus one more
 * kind: every table (L1, refcount table, snapshot table, bitmap directory,
 * backing file name) must lie inside the file, so a crafted header cannot
 * make us allocate or read more than the image holds.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

/* Offset and size of a table of `entries` entries of `entry_len` bytes:
 * cluster-aligned, no overflow, inside the file. */
static int check_table(BDRVQcow2State *s, const char *name, const char *what,
                       uint64_t offset, uint64_t entries, uint64_t entry_len,
                       int64_t file_len, Error **errp)
{
    if (entries > (uint64_t)INT64_MAX / entry_len) {
        error_setg(errp, "qcow2: %s: %s of %" PRIu64 " entries is too large", name, what,
                   entries);
        return -EINVAL;
    }
    uint64_t size = entries * entry_len;
    if ((uint64_t)INT64_MAX - size < offset || qcow2_offset_into_cluster(s, offset)) {
        error_setg(errp, "qcow2: %s: Invalid %s offset 0x%" PRIx64 " (size %" PRIu64 ")",
                   name, what, offset, size);
        return -EINVAL;
    }
    if (size && offset + size > (uint64_t)file_len) {
        error_setg(errp, "qcow2: %s: %s at 0x%" PRIx64 " (%" PRIu64 " bytes) extends beyond"
                   " the end of the file (%" PRId64 " bytes)", name, what, offset, size,
                   file_len);
        return -EINVAL;
    }
    return 0;
}

static void parse_fixed_header(const uint8_t *b, Qcow2Header *h)
{
    h->version = qcow2_ld32(b, QH_VERSION);
    h->backing_file_offset = qcow2_ld64(b, QH_BACKING_OFFSET);
    h->backing_file_size = qcow2_ld32(b, QH_BACKING_SIZE);
    h->cluster_bits = qcow2_ld32(b, QH_CLUSTER_BITS);
    h->size = qcow2_ld64(b, QH_SIZE);
    h->crypt_method = qcow2_ld32(b, QH_CRYPT_METHOD);
    h->l1_size = qcow2_ld32(b, QH_L1_SIZE);
    h->l1_table_offset = qcow2_ld64(b, QH_L1_OFFSET);
    h->refcount_table_offset = qcow2_ld64(b, QH_REFTABLE_OFFSET);
    h->refcount_table_clusters = qcow2_ld32(b, QH_REFTABLE_CLUSTERS);
    h->nb_snapshots = qcow2_ld32(b, QH_NB_SNAPSHOTS);
    h->snapshots_offset = qcow2_ld64(b, QH_SNAPSHOTS_OFFSET);
    if (h->version == 2) {
        h->incompat = h->compat = h->autoclear = 0;
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LENGTH;
        h->compression_type = QCOW2_COMPRESSION_ZLIB;
    } else {
        h->incompat = qcow2_ld64(b, QH_INCOMPAT);
        h->compat = qcow2_ld64(b, QH_COMPAT);
        h->autoclear = qcow2_ld64(b, QH_AUTOCLEAR);
        h->refcount_order = qcow2_ld32(b, QH_REFCOUNT_ORDER);
        h->header_length = qcow2_ld32(b, QH_HEADER_LENGTH);
        h->compression_type = h->header_length > QH_COMPRESSION_TYPE ? b[QH_COMPRESSION_TYPE]
                                                                     : QCOW2_COMPRESSION_ZLIB;
    }
}

/* "dirty bit, Unknown incompatible feature 5, ..." for unknown bits. */
static void report_unsupported(BDRVQcow2State *s, const char *name, uint64_t mask,
                               Error **errp)
{
    char msg[1024] = "";
    size_t len = 0;

    for (int bit = 0; bit < 64; bit++) {
        if (!(mask & (1ULL << bit))) {
            continue;
        }
        const char *fname = NULL;
        for (int i = 0; i < s->nb_features; i++) {
            if (s->features[i].type == QCOW2_FEAT_INCOMPAT && s->features[i].bit == bit) {
                fname = s->features[i].name;
            }
        }
        int n = fname ? snprintf(msg + len, sizeof(msg) - len, "%s%s", len ? ", " : "", fname)
                      : snprintf(msg + len, sizeof(msg) - len,
                                 "%sUnknown incompatible feature: %" PRIx64, len ? ", " : "",
                                 (uint64_t)1 << bit);
        if (n < 0 || (size_t)n >= sizeof(msg) - len) {
            break;
        }
        len += (size_t)n;
    }
    error_setg(errp, "qcow2: %s: Unsupported qcow2 feature(s): %s (incompatible_features"
               " 0x%" PRIx64 ")", name, msg, s->h.incompat);
}

static int read_bitmaps_ext(BDRVQcow2State *s, const char *name, const uint8_t *d,
                            uint32_t len, int64_t file_len, Error **errp)
{
    if (len != 24) {
        error_setg(errp, "qcow2: %s: bitmaps_ext: Invalid extension length %" PRIu32
                   " (must be 24)", name, len);
        return -EINVAL;
    }
    uint32_t nb = qcow2_ld32(d, 0), reserved = qcow2_ld32(d, 4);
    uint64_t dir_size = qcow2_ld64(d, 8), dir_offset = qcow2_ld64(d, 16);

    if (!(s->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        /* A program without bitmap support wrote the image: QEMU warns and
         * ignores the bitmaps, and so do we. */
        warn_report("qcow2: %s: a program lacking bitmap support modified this file, so all"
                    " bitmaps are now considered inconsistent", name);
        return 0;
    }
    if (reserved) {
        error_setg(errp, "qcow2: %s: bitmaps_ext: Reserved field is not zero (0x%" PRIx32 ")",
                   name, reserved);
        return -EINVAL;
    }
    if (nb > QCOW2_MAX_BITMAPS) {
        error_setg(errp, "qcow2: %s: bitmaps_ext: Image has %" PRIu32 " bitmaps, exceeding the"
                   " QEMU supported maximum of %d", name, nb, QCOW2_MAX_BITMAPS);
        return -EINVAL;
    }
    if (nb == 0) {
        error_setg(errp, "qcow2: %s: found bitmaps extension with zero bitmaps", name);
        return -EINVAL;
    }
    if (qcow2_offset_into_cluster(s, dir_offset)) {
        error_setg(errp, "qcow2: %s: bitmaps_ext: invalid bitmap directory offset 0x%" PRIx64,
                   name, dir_offset);
        return -EINVAL;
    }
    if (dir_size > QCOW2_MAX_BITMAP_DIR_SIZE) {
        error_setg(errp, "qcow2: %s: bitmaps_ext: bitmap directory size (%" PRIu64 ") exceeds"
                   " the maximum supported size (%d)", name, dir_size,
                   QCOW2_MAX_BITMAP_DIR_SIZE);
        return -EINVAL;
    }
    if (dir_offset > (uint64_t)file_len || dir_size > (uint64_t)file_len - dir_offset) {
        error_setg(errp, "qcow2: %s: bitmap directory at 0x%" PRIx64 " (%" PRIu64 " bytes)"
                   " extends beyond the end of the file (%" PRId64 " bytes)", name,
                   dir_offset, dir_size, file_len);
        return -EINVAL;
    }
    s->nb_bitmaps = nb;
    s->bitmap_directory_size = dir_size;
    s->bitmap_directory_offset = dir_offset;
    return 0;
}

/* Extensions from `start` to `end` of cluster 0 (buf holds the cluster). */
static int read_extensions(BlockDriverState *bs, const uint8_t *buf, uint64_t start,
                           uint64_t end, int64_t file_len, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    uint64_t off = start;
    Qcow2UnknownExt **tail = &s->unknown_exts;

    while (off < end) {
        if (end - off < 8) {
            error_setg(errp, "qcow2: %s: header extension at 0x%" PRIx64 " is cut off by the"
                       " end of the header area (0x%" PRIx64 ")", name, off, end);
            return -EINVAL;
        }
        uint32_t type = qcow2_ld32(buf, off), len = qcow2_ld32(buf, off + 4);
        off += 8;
        if (len > end - off) {
            error_setg(errp, "qcow2: %s: Header extension too large (type 0x%08" PRIx32
                       ", length %" PRIu32 " at 0x%" PRIx64 ")", name, type, len, off - 8);
            return -EINVAL;
        }
        const uint8_t *d = buf + off;
        switch (type) {
        case QCOW2_EXT_END:
            return 0;
        case QCOW2_EXT_BACKING_FORMAT:
            if (len >= sizeof(bs->backing_format)) {
                error_setg(errp, "qcow2: %s: backing format name of %" PRIu32 " bytes is too"
                           " long (max %zu)", name, len, sizeof(bs->backing_format) - 1);
                return -EINVAL;
            }
            memcpy(bs->backing_format, d, len);
            bs->backing_format[len] = 0;
            break;
        case QCOW2_EXT_FEATURE_TABLE: {
            int n = (int)(len / 48);
            free(s->features);
            s->features = n ? calloc((size_t)n, sizeof(*s->features)) : NULL;
            if (n && !s->features) {
                return -ENOMEM;
            }
            s->nb_features = n;
            for (int i = 0; i < n; i++) {
                s->features[i].type = d[i * 48];
                s->features[i].bit = d[i * 48 + 1];
                memcpy(s->features[i].name, d + i * 48 + 2, 46);
                s->features[i].name[46] = 0;
            }
            break;
        }
        case QCOW2_EXT_BITMAPS: {
            int ret = read_bitmaps_ext(s, name, d, len, file_len, errp);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        case QCOW2_EXT_CRYPTO:
            if (len != 16) {
                error_setg(errp, "qcow2: %s: Invalid encryption header extension length %"
                           PRIu32 " (must be 16)", name, len);
                return -EINVAL;
            }
            if (s->h.crypt_method != QCOW2_CRYPT_LUKS) {
                error_setg(errp, "qcow2: %s: CRYPTO header extension only expected with LUKS"
                           " encryption method (crypt_method %" PRIu32 ")", name,
                           s->h.crypt_method);
                return -EINVAL;
            }
            s->crypto_header_offset = qcow2_ld64(d, 0);
            s->crypto_header_length = qcow2_ld64(d, 8);
            break;
        case QCOW2_EXT_DATA_FILE:
            free(s->image_data_file);
            s->image_data_file = malloc(len + 1);
            if (!s->image_data_file) {
                return -ENOMEM;
            }
            memcpy(s->image_data_file, d, len);
            s->image_data_file[len] = 0;
            if (strlen(s->image_data_file) != len) {
                error_setg(errp, "qcow2: %s: external data file name contains a NUL byte",
                           name);
                return -EINVAL;
            }
            break;
        default: {
            /* Kept, to be written back as it was when the header is rewritten. */
            Qcow2UnknownExt *e = calloc(1, sizeof(*e));
            if (!e || !(e->data = malloc(len ? len : 1))) {
                free(e);
                return -ENOMEM;
            }
            e->type = type;
            e->len = len;
            memcpy(e->data, d, len);
            *tail = e;
            tail = &e->next;
            break;
        }
        }
        off += ALIGN_UP((uint64_t)len, 8);
    }
    return 0;
}

static int validate_header(BlockDriverState *bs, int64_t file_len, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Header *h = &s->h;
    const char *name = qcow2_image_name(bs);
    int ret;

    if (h->header_length < QCOW2_V3_HEADER_LENGTH && h->version == 3) {
        error_setg(errp, "qcow2: %s: qcow2 header too short (header_length %" PRIu32 ")",
                   name, h->header_length);
        return -EINVAL;
    }
    if (h->header_length > s->cluster_size) {
        error_setg(errp, "qcow2: %s: qcow2 header exceeds cluster size (header_length %" PRIu32
                   ", cluster size %" PRIu32 ")", name, h->header_length, s->cluster_size);
        return -EINVAL;
    }
    if (h->backing_file_offset > s->cluster_size) {
        error_setg(errp, "qcow2: %s: Invalid backing file offset 0x%" PRIx64, name,
                   h->backing_file_offset);
        return -EINVAL;
    }
    if (h->refcount_order > 6) {
        error_setg(errp, "qcow2: %s: Reference count entry width too large; may not exceed"
                   " 64 bits (refcount_order %" PRIu32 ")", name, h->refcount_order);
        return -EINVAL;
    }
    /* Encrypted images are opened by qcow2-crypto.c. */
    if (h->crypt_method > QCOW2_CRYPT_LUKS) {
        error_setg(errp, "qcow2: %s: Unsupported encryption method: %" PRIu32, name,
                   h->crypt_method);
        return -ENOTSUP;
    }
    switch (h->compression_type) {
    case QCOW2_COMPRESSION_ZLIB:
#ifdef CONFIG_ZSTD
    case QCOW2_COMPRESSION_ZSTD:
#endif
        break;
    default:
        error_setg(errp, "qcow2: %s: unknown compression type: %u", name, h->compression_type);
        return -ENOTSUP;
    }
    if (h->compression_type == QCOW2_COMPRESSION_ZLIB &&
        (h->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
        error_setg(errp, "qcow2: %s: Compression type incompatible feature bit must not be"
                   " set (compression_type zlib)", name);
        return -EINVAL;
    }
    if (h->compression_type != QCOW2_COMPRESSION_ZLIB &&
        !(h->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
        error_setg(errp, "qcow2: %s: Compression type incompatible feature bit must be set"
                   " (compression_type %u)", name, h->compression_type);
        return -EINVAL;
    }
    if (s->subcluster_size < (1U << QCOW2_MIN_CLUSTER_BITS)) {
        error_setg(errp, "qcow2: %s: Unsupported subcluster size: %" PRIu32 " (extended L2"
                   " with cluster size %" PRIu32 ")", name, s->subcluster_size,
                   s->cluster_size);
        return -EINVAL;
    }

    /* L1: QEMU's limit, the size it must cover, then the file. */
    if (h->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        error_setg(errp, "qcow2: %s: Active L1 table too large (l1_size %" PRIu32 ")", name,
                   h->l1_size);
        return -EFBIG;
    }
    uint64_t l2_span_bits = s->cluster_bits + s->l2_bits;
    uint64_t l1_needed = (h->size >> l2_span_bits) +
                         ((h->size & ((1ULL << l2_span_bits) - 1)) != 0);
    if (l1_needed > INT32_MAX) {
        error_setg(errp, "qcow2: %s: Image is too big (size %" PRIu64 ")", name, h->size);
        return -EFBIG;
    }
    if (h->l1_size < l1_needed) {
        error_setg(errp, "qcow2: %s: L1 table is too small (l1_size %" PRIu32 ", size %" PRIu64
                   " needs %" PRIu64 ")", name, h->l1_size, h->size, l1_needed);
        return -EINVAL;
    }
    /* img check opens truncated images (as qemu-img does) to report what
     * is missing: the tables are read as zeros past the end, and their caps
     * (32 MiB, 8 MiB) still bound what is allocated for them. */
    int64_t table_end = (flags & BDRV_O_CHECK) ? INT64_MAX : file_len;
    ret = check_table(s, name, "L1 table", h->l1_table_offset, h->l1_size, 8, table_end, errp);
    if (ret < 0) {
        return ret;
    }

    if (h->refcount_table_clusters > QCOW2_MAX_REFTABLE_BYTES / s->cluster_size) {
        error_setg(errp, "qcow2: %s: Reference count table too large (refcount_table_clusters"
                   " %" PRIu32 ")", name, h->refcount_table_clusters);
        return -EINVAL;
    }
    if (h->refcount_table_clusters == 0) {
        error_setg(errp, "qcow2: %s: Image does not contain a reference count table", name);
        return -EINVAL;
    }
    ret = check_table(s, name, "reference count table", h->refcount_table_offset,
                      h->refcount_table_clusters, s->cluster_size, table_end, errp);
    if (ret < 0) {
        return ret;
    }

    /* img check validates (and with -r all repairs) the snapshot table
     * pointer itself, as QEMU's qcow2_check_read_snapshot_table does. */
    if (flags & BDRV_O_CHECK) {
        return 0;
    }
    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "qcow2: %s: Too many snapshots (nb_snapshots %" PRIu32 ")", name,
                   h->nb_snapshots);
        return -EINVAL;
    }
    ret = check_table(s, name, "snapshot table", h->snapshots_offset, h->nb_snapshots,
                      QCOW2_SNAPSHOT_HEADER_MIN, file_len, errp);
    if (ret < 0) {
        return ret;
    }

    return 0;
}

/* Feature bits, once the feature-name table is known (for the message). */
static int check_features(BlockDriverState *bs, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Header *h = &s->h;
    const char *name = qcow2_image_name(bs);
    uint64_t unknown = h->incompat & ~QCOW2_INCOMPAT_KNOWN;

    if (unknown) {
        report_unsupported(s, name, unknown, errp);
        return -ENOTSUP;
    }
    if ((h->incompat & QCOW2_INCOMPAT_CORRUPT) && (flags & BDRV_O_RDWR) &&
        !(flags & BDRV_O_CHECK)) {
        error_setg(errp, "qcow2: %s: Image is corrupt; cannot be opened read/write"
                   " (incompatible_features 0x%" PRIx64 "; open read-only to read it)",
                   name, h->incompat);
        return -EACCES;
    }
    if ((h->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) && !qcow2_has_data_file(s)) {
        error_setg(errp, "qcow2: %s: data-file-raw requires a data file (autoclear_features"
                   " 0x%" PRIx64 ")", name, h->autoclear);
        return -EINVAL;
    }
    if (h->backing_file_offset && qcow2_has_data_file(s) && qcow2_data_file_is_raw(s)) {
        error_setg(errp, "qcow2: %s: data-file-raw cannot be used with a backing file", name);
        return -EINVAL;
    }
    return 0;
}

int qcow2_read_header(BlockDriverState *bs, int64_t file_len, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    uint8_t first[QCOW2_V3_HEADER_LENGTH + 8] = { 0 };
    uint8_t *buf = NULL;
    int ret;

    if (file_len < QCOW2_V2_HEADER_LENGTH) {
        error_setg(errp, "qcow2: %s: file too small for a qcow2 header (%" PRId64 " bytes)",
                   name, file_len);
        return -EINVAL;
    }
    ret = bdrv_pread(bs->file, 0, MIN((int64_t)sizeof(first), file_len), first, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot read the header", name);
        return ret;
    }
    uint32_t magic = qcow2_ld32(first, QH_MAGIC);
    if (magic != QCOW2_MAGIC) {
        error_setg(errp, "qcow2: %s: Image is not in qcow2 format (magic 0x%08" PRIx32 ")",
                   name, magic);
        return -EINVAL;
    }
    uint32_t version = qcow2_ld32(first, QH_VERSION);
    if (version < 2 || version > 3) {
        error_setg(errp, "qcow2: %s: Unsupported qcow2 version %" PRIu32, name, version);
        return -ENOTSUP;
    }
    if (version == 3 && file_len < QCOW2_V3_HEADER_LENGTH) {
        error_setg(errp, "qcow2: %s: file too small for a version 3 header (%" PRId64 " bytes)",
                   name, file_len);
        return -EINVAL;
    }
    parse_fixed_header(first, &s->h);
    if (s->h.cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->h.cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "qcow2: %s: Unsupported cluster size: 2^%" PRIu32 " (cluster_bits)",
                   name, s->h.cluster_bits);
        return -EINVAL;
    }
    s->cluster_bits = s->h.cluster_bits;
    s->cluster_size = 1U << s->cluster_bits;
    s->l2_entry_size = qcow2_has_subclusters(s) ? 16 : 8;
    s->l2_bits = s->cluster_bits - (qcow2_has_subclusters(s) ? 4 : 3);
    s->subclusters_per_cluster = qcow2_has_subclusters(s) ? QCOW2_EXTL2_SUBCLUSTERS : 1;
    s->subcluster_size = s->cluster_size / s->subclusters_per_cluster;
    s->subcluster_bits = s->cluster_bits - (qcow2_has_subclusters(s) ? 5 : 0);
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ULL << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (1ULL << s->csize_shift) - 1;

    ret = validate_header(bs, file_len, flags, errp);
    if (ret < 0) {
        return ret;
    }
    s->refcount_block_bits = s->cluster_bits - (s->h.refcount_order - 3);

    /* Extensions: from the end of the header to the backing file name or
     * the end of cluster 0. */
    buf = calloc(1, s->cluster_size);
    if (!buf) {
        return -ENOMEM;
    }
    ret = bdrv_pread(bs->file, 0, MIN((int64_t)s->cluster_size, file_len), buf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot read the header cluster", name);
        free(buf);
        return ret;
    }
    uint64_t ext_end = s->h.backing_file_offset ? s->h.backing_file_offset : s->cluster_size;
    ret = read_extensions(bs, buf, s->h.header_length, ext_end, file_len, errp);
    if (ret == -ENOMEM) {
        error_setg(errp, "qcow2: %s: out of memory reading header extensions", name);
    }
    if (ret == 0) {
        ret = check_features(bs, flags, errp);
    }
    if (ret < 0) {
        free(buf);
        return ret;
    }

    if (s->h.backing_file_offset) {
        uint32_t len = s->h.backing_file_size;
        if (len > QCOW2_MAX_BACKING_NAME || len > s->cluster_size - s->h.backing_file_offset) {
            error_setg(errp, "qcow2: %s: Backing file name too long (backing_file_size %" PRIu32
                       " at 0x%" PRIx64 ")", name, len, s->h.backing_file_offset);
            free(buf);
            return -EINVAL;
        }
        memcpy(bs->backing_file, buf + s->h.backing_file_offset, len);
        bs->backing_file[len] = 0;
        if (strlen(bs->backing_file) != len) {
            error_setg(errp, "qcow2: %s: backing file name contains a NUL byte", name);
            free(buf);
            return -EINVAL;
        }
    }
    free(buf);

    if (qcow2_has_data_file(s) && s->image_data_file == NULL) {
        /* The user may name it with data-file=...; qcow2.c checks. */
    } else if (!qcow2_has_data_file(s) && s->image_data_file) {
        free(s->image_data_file);           /* QEMU ignores the name without the bit */
        s->image_data_file = NULL;
    }
    return 0;
}

void qcow2_free_header_state(BDRVQcow2State *s)
{
    free(s->features);
    s->features = NULL;
    s->nb_features = 0;
    free(s->image_data_file);
    s->image_data_file = NULL;
    while (s->unknown_exts) {
        Qcow2UnknownExt *e = s->unknown_exts;
        s->unknown_exts = e->next;
        free(e->data);
        free(e);
    }
}
