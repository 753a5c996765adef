/*
 * qcow2-create.c - `img create -f qcow2`: images laid out byte for byte as
 * qemu-img 7.2 lays them out.
 *
 * qemu-img does not compute a layout: it writes a minimal image (header,
 * refcount table, one refcount block), opens it and lets the driver's
 * allocator grow it (L1 table, then for preallocation L2 tables and data
 * clusters, refcount blocks as they become necessary, a new refcount table
 * when the old one is full).  Where each structure lands follows from that
 * allocator's rules (first-fit from a moving free-cluster index, refcount
 * blocks that describe themselves, restarts after a new refcount block).
 * So qcow2-create-layout.c replays those steps on an in-memory model of the
 * image (Q2Sim, qcow2-create.h), and this file (options, header, the steps
 * in qemu-img's order) writes the result: structures freed on the way are
 * written when they are given up, live ones at the end.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-create.h"

const CreateOptDesc qcow2_create_opts[] = {
    /* qemu-img prints given encrypt.* options first in its Formatting line */
    { "encryption", "bool", "Encrypt the image with format 'aes'. (Deprecated in favor of"
      " encrypt.format=aes)", NULL },
    { "encrypt.format", "string", "Encrypt the image, format choices: 'aes', 'luks'", NULL },
    { "encrypt.key-secret", "string", "ID of secret providing qcow AES key or LUKS passphrase",
      NULL },
    { "encrypt.cipher-alg", "string", "Name of encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", "string", "Name of encryption cipher mode", NULL },
    { "encrypt.ivgen-alg", "string", "Name of IV generator algorithm", NULL },
    { "encrypt.ivgen-hash-alg", "string", "Name of IV generator hash algorithm", NULL },
    { "encrypt.hash-alg", "string", "Name of encryption hash algorithm", NULL },
    { "encrypt.iter-time", "number", "Time to spend in PBKDF in milliseconds", NULL },
    { "cluster_size", "size", "qcow2 cluster size", "65536" },
    { "extended_l2", "bool", "Extended L2 tables", "off" },
    { "preallocation", "string", "Preallocation mode (allowed values: off, metadata, falloc,"
      " full)", NULL },
    { "compression_type", "string", "Compression method used for image cluster compression",
      "zlib" },
    { "size", "size", "Virtual disk size", NULL },
    { "compat", "string", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", "string", "File name of a base image", NULL },
    { "backing_fmt", "string", "Image format of the base image", NULL },
    { "data_file", "string", "File name of an external data file", NULL },
    { "data_file_raw", "bool", "The external data file must stay valid as a raw image", NULL },
    { "lazy_refcounts", "bool", "Postpone refcount updates", "off" },
    { "refcount_bits", "number", "Width of a reference count entry in bits", "16" },
    { NULL, NULL, NULL, NULL },
};

static size_t header_ext(uint8_t *buf, uint32_t type, const void *data, uint32_t len)
{
    uint32_t be = htobe32(type);
    memcpy(buf, &be, 4);
    be = htobe32(len);
    memcpy(buf + 4, &be, 4);
    if (len) {
        memcpy(buf + 8, data, len);
    }
    return 8 + ALIGN_UP((size_t)len, 8);
}

typedef struct Q2CreateOpts {
    uint64_t size, cluster_size;
    int version;
    bool extl2, lazy, data_file_raw;
    int prealloc;
    int compression;
    uint64_t refcount_bits;
    char *backing_file, *backing_fmt, *data_file;
} Q2CreateOpts;

/* The header cluster as QEMU's qcow2_update_header writes it. */
static int build_header(const Q2Sim *s, const Q2CreateOpts *o, uint64_t size, uint8_t *buf,
                        Error **errp, const char *filename)
{
    size_t hl = o->version == 3 ? 112 : QCOW2_V2_HEADER_LENGTH;
    uint32_t crypt = s->crypto_len ? QCOW2_CRYPT_LUKS : QCOW2_CRYPT_NONE;
    uint64_t incompat = 0, compat = 0, autoclear = 0;

    memset(buf, 0, s->cs);
    if (o->data_file) {
        incompat |= QCOW2_INCOMPAT_DATA_FILE;
    }
    if (o->compression != QCOW2_COMPRESSION_ZLIB) {
        incompat |= QCOW2_INCOMPAT_COMPRESSION;
    }
    if (o->extl2) {
        incompat |= QCOW2_INCOMPAT_EXTL2;
    }
    if (o->lazy) {
        compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    if (o->data_file_raw) {
        autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
    }
    struct { size_t off; uint64_t v; int w; } f[] = {
        { QH_MAGIC, QCOW2_MAGIC, 4 }, { QH_VERSION, (uint64_t)o->version, 4 },
        { QH_CLUSTER_BITS, s->cb, 4 }, { QH_SIZE, size, 8 }, { QH_CRYPT_METHOD, crypt, 4 },
        { QH_L1_SIZE, s->l1_size, 4 }, { QH_L1_OFFSET, s->l1_offset, 8 },
        { QH_REFTABLE_OFFSET, s->reftable_offset, 8 },
        { QH_REFTABLE_CLUSTERS, s->reftable_size * 8 / s->cs, 4 },
        { QH_INCOMPAT, incompat, 8 }, { QH_COMPAT, compat, 8 }, { QH_AUTOCLEAR, autoclear, 8 },
        { QH_REFCOUNT_ORDER, s->order, 4 }, { QH_HEADER_LENGTH, hl, 4 },
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (f[i].off >= hl) {
            continue;
        }
        if (f[i].w == 4) {
            uint32_t be = htobe32((uint32_t)f[i].v);
            memcpy(buf + f[i].off, &be, 4);
        } else {
            uint64_t be = htobe64(f[i].v);
            memcpy(buf + f[i].off, &be, 8);
        }
    }
    if (o->version == 3) {
        buf[QH_COMPRESSION_TYPE] = (uint8_t)o->compression;
    }
    size_t pos = hl;
    if (o->backing_fmt) {
        pos += header_ext(buf + pos, QCOW2_EXT_BACKING_FORMAT, o->backing_fmt,
                          (uint32_t)strlen(o->backing_fmt));
    }
    if (o->data_file) {
        pos += header_ext(buf + pos, QCOW2_EXT_DATA_FILE, o->data_file,
                          (uint32_t)strlen(o->data_file));
    }
    if (s->crypto_len) {
        uint64_t ext[2] = { htobe64(s->crypto_offset), htobe64(s->crypto_len) };
        pos += header_ext(buf + pos, QCOW2_EXT_CRYPTO, ext, sizeof(ext));
    }
    /* The table is informational; QEMU leaves it out of clusters of 4 KiB
     * and less to keep room for a backing file name. */
    if (o->version == 3 && s->cs > 4096) {
        uint8_t table[QCOW2_FEATURE_TABLE_BYTES];
        size_t tlen = qcow2_feature_table(table);
        pos += header_ext(buf + pos, QCOW2_EXT_FEATURE_TABLE, table, (uint32_t)tlen);
    }
    pos += header_ext(buf + pos, QCOW2_EXT_END, NULL, 0);
    if (o->backing_file) {
        size_t len = strlen(o->backing_file);
        if (len > s->cs - pos) {
            error_setg(errp, "qcow2: %s: backing file name of %zu bytes does not fit in the"
                       " header cluster", filename, len);
            return -ENOSPC;
        }
        memcpy(buf + pos, o->backing_file, len);
        uint64_t be64 = htobe64(pos);
        memcpy(buf + QH_BACKING_OFFSET, &be64, 8);
        uint32_t be32 = htobe32((uint32_t)len);
        memcpy(buf + QH_BACKING_SIZE, &be32, 4);
    }
    return 0;
}

/* Options, checked in qemu-img's order with its messages (plus the value). */
static int parse_opts(OptDict *opts, Q2CreateOpts *o, Error **errp)
{
    static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };
    static const char *const compression_names[] = { "zlib", "zstd", NULL };
    char *compat = NULL;
    Error *local = NULL;

    memset(o, 0, sizeof(*o));
    if (optdict_take_size(opts, "size", 0, &o->size, errp) < 0 ||
        optdict_take_size(opts, "cluster_size", 65536, &o->cluster_size, errp) < 0 ||
        optdict_take_bool(opts, "extended_l2", false, &o->extl2, errp) < 0 ||
        optdict_take_bool(opts, "lazy_refcounts", false, &o->lazy, errp) < 0 ||
        optdict_take_bool(opts, "data_file_raw", false, &o->data_file_raw, errp) < 0 ||
        optdict_take_size(opts, "refcount_bits", 16, &o->refcount_bits, errp) < 0) {
        return -EINVAL;
    }
    char *val = NULL;
    optdict_take_str(opts, "preallocation", NULL, &val);
    if (val) {
        optdict_set(opts, "preallocation", val);
    }
    o->prealloc = optdict_take_enum(opts, "preallocation", prealloc_names, 0, &local);
    if (o->prealloc < 0) {
        error_free(local);
        error_setg(errp, "Parameter 'preallocation' does not accept value '%s'", val);
        free(val);
        return -EINVAL;
    }
    free(val);
    val = NULL;
    optdict_take_str(opts, "compression_type", NULL, &val);
    if (val) {
        optdict_set(opts, "compression_type", val);
    }
    o->compression = optdict_take_enum(opts, "compression_type", compression_names, 0, &local);
    if (o->compression < 0) {
        error_free(local);
        error_setg(errp, "Parameter 'compression-type' does not accept value '%s'", val);
        free(val);
        return -EINVAL;
    }
    free(val);
    optdict_take_str(opts, "compat", NULL, &compat);
    optdict_take_str(opts, "backing_file", NULL, &o->backing_file);
    optdict_take_str(opts, "backing_fmt", NULL, &o->backing_fmt);
    optdict_take_str(opts, "data_file", NULL, &o->data_file);
    o->version = 3;
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
            o->version = 2;
        } else if (strcmp(compat, "1.1") && strcmp(compat, "v3")) {
            error_setg(errp, "Parameter 'version' does not accept value '%s'", compat);
            free(compat);
            return -EINVAL;
        }
        free(compat);
    }
    o->size = ALIGN_UP(o->size, (uint64_t)BDRV_SECTOR_SIZE);
    if (o->version < 3 && o->extl2) {
        error_setg(errp, "Extended L2 entries are only supported with compatibility level 1.1"
                   " and above (use version=v3 or greater)");
        return -EINVAL;
    }
    uint64_t cs = o->cluster_size;
    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between 512 and 2048k"
                   " (cluster_size %" PRIu64 ")", cs);
        return -EINVAL;
    }
    if (o->extl2 && cs < 16384) {
        error_setg(errp, "Extended L2 entries are only supported with cluster sizes of at"
                   " least 16384 bytes (cluster_size %" PRIu64 ")", cs);
        return -EINVAL;
    }
    if (o->backing_fmt && !o->backing_file) {
        error_setg(errp, "Backing format cannot be used without backing file");
        return -EINVAL;
    }
    if (o->backing_file && o->prealloc != PREALLOC_MODE_OFF && !o->extl2) {
        error_setg(errp, "Backing file and preallocation can only be used at the same time if"
                   " extended_l2 is on");
        return -EINVAL;
    }
    if (o->version < 3 && o->lazy) {
        error_setg(errp, "Lazy refcounts only supported with compatibility level 1.1 and"
                   " above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (!o->refcount_bits || o->refcount_bits > 64 ||
        (o->refcount_bits & (o->refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not exceed 64 bits"
                   " (refcount_bits %" PRIu64 ")", o->refcount_bits);
        return -EINVAL;
    }
    if (o->version < 3 && o->refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require compatibility level"
                   " 1.1 or above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (o->version < 3 && o->data_file) {
        error_setg(errp, "External data files are only supported with compatibility level 1.1"
                   " and above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (o->data_file_raw && !o->data_file) {
        error_setg(errp, "data-file-raw requires data-file");
        return -EINVAL;
    }
    if (o->data_file_raw && o->backing_file) {
        error_setg(errp, "Backing file and data-file-raw cannot be used at the same time");
        return -EINVAL;
    }
    if (o->data_file_raw && o->prealloc == PREALLOC_MODE_OFF) {
        /* the L2 tables must map the data file one to one */
        o->prealloc = PREALLOC_MODE_METADATA;
    }
    if (o->version < 3 && o->compression != QCOW2_COMPRESSION_ZLIB) {
        error_setg(errp, "Non-zlib compression type is only supported with compatibility"
                   " level 1.1 and above (use version=v3 or greater)");
        return -EINVAL;
    }
#ifndef CONFIG_ZSTD
    if (o->compression == QCOW2_COMPRESSION_ZSTD) {
        error_setg(errp, "Parameter 'compression-type' does not accept value 'zstd'"
                   " (built without zstd)");
        return -ENOTSUP;
    }
#endif
    uint32_t cb = (uint32_t)__builtin_ctzll(cs);
    uint32_t l2_span = cb + cb - (o->extl2 ? 4 : 3);
    uint64_t l1 = (o->size >> l2_span) + ((o->size & ((UINT64_C(1) << l2_span) - 1)) != 0);
    if (l1 > QCOW2_MAX_L1_BYTES / 8) {
        error_setg(errp, "The image size is too large for file format 'qcow2' (try using a"
                   " larger cluster size) (size %" PRIu64 ", cluster_size %" PRIu64 ")",
                   o->size, cs);
        return -EFBIG;
    }
    return 0;
}

static int open_new_file(const char *filename, PreallocMode prealloc, uint64_t size,
                         BdrvChild **child, Error **errp)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    OptDict *fo = optdict_new();
    optdict_set_int(fo, "size", (int64_t)size);
    if (prealloc == PREALLOC_MODE_FALLOC || prealloc == PREALLOC_MODE_FULL) {
        optdict_set(fo, "preallocation", names[prealloc]);
    }
    int ret = bdrv_co_create_file(filename, fo, errp);
    optdict_free(fo);
    if (ret < 0) {
        return ret;
    }
    BlockDriverState *bs = bdrv_open(filename, NULL, BDRV_O_RDWR | BDRV_O_PROTOCOL, errp);
    if (!bs) {
        return -EIO;
    }
    *child = bdrv_root_attach_child(bs, "qcow2-create", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY,
                                    BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                    BLK_PERM_EXCLUSIVE_SHARED, errp);
    return *child ? 0 : -EIO;
}

/* The data file's name as the header records it: as given. */
int coroutine_fn qcow2_co_create(const char *filename, OptDict *opts, Error **errp)
{
    Q2CreateOpts o;
    Q2Sim s = { 0 };
    BdrvChild *data = NULL;
    uint8_t *hdr = NULL;
    uint64_t end = 0;
    uint8_t *luks = NULL;
    size_t luks_len = 0;
    int ret = parse_opts(opts, &o, errp);
    if (ret < 0) {
        goto out_opts;
    }
    /* The LUKS area first: a bad option or secret fails before any file exists. */
    ret = qcow2_crypto_create_area(opts, &luks, &luks_len, errp);
    if (ret < 0) {
        goto out_opts;
    }
    if (luks && o.prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Preallocation is not supported with encryption (preallocated clusters"
                   " would read as garbage through the cipher)");
        ret = -ENOTSUP;
        goto out_opts;
    }
    s.cb = (uint32_t)__builtin_ctzll(o.cluster_size);
    s.cs = o.cluster_size;
    s.order = (uint32_t)__builtin_ctzll(o.refcount_bits);
    s.rb_bits = s.cb + 3 - s.order;
    s.rb_size = UINT64_C(1) << s.rb_bits;
    s.extl2 = o.extl2;
    s.l2_entry_size = o.extl2 ? 16 : 8;
    s.l2_size = s.cs / s.l2_entry_size;
    s.data_file = o.data_file != NULL;

    if (o.data_file) {
        /* The data file holds the guest data at guest offsets. */
        PreallocMode dm = o.prealloc == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : o.prealloc;
        ret = open_new_file(o.data_file, dm, o.size, &data, errp);
        if (ret < 0) {
            goto out_opts;
        }
    }
    ret = open_new_file(filename, PREALLOC_MODE_OFF, 0, &s.file, errp);
    if (ret < 0) {
        goto out;
    }

    /* The minimal image: header, refcount table, one refcount block,
     * clusters 0-2 counted (QEMU allocates them through its allocator,
     * which on an empty refcount block gives exactly these). */
    s.reftable_size = s.cs / 8;
    s.reftable = calloc(s.reftable_size, 8);
    if (!s.reftable || !q2sim_rb_new(&s, 2 * s.cs)) {
        ret = -ENOMEM;
        goto nomem;
    }
    s.reftable_offset = s.cs;
    s.reftable[0] = 2 * s.cs;
    q2sim_note_write(&s, 0, 3 * s.cs);
    int64_t first = q2sim_alloc_clusters(&s, 3 * s.cs);
    if (first != 0) {
        ret = first < 0 ? (int)first : -EIO;
        goto io_fail;
    }
    ret = q2sim_grow_l1(&s, q2sim_size_to_l1(&s, o.size));
    if (ret < 0) {
        goto io_fail;
    }
    if (luks) {
        /* QEMU's qcow2_crypto_hdr_init_func: whole clusters after the L1
         * table, zeroed, the LUKS area at their start. */
        uint64_t clen = ALIGN_UP((uint64_t)luks_len, s.cs);
        int64_t off = q2sim_alloc_clusters(&s, clen);
        if (off < 0) {
            ret = (int)off;
            goto io_fail;
        }
        uint8_t *buf = calloc(1, clen);
        if (!buf) {
            ret = -ENOMEM;
            goto nomem;
        }
        memcpy(buf, luks, luks_len);
        ret = bdrv_pwrite(s.file, off, (int64_t)clen, buf, 0);
        free(buf);
        if (ret < 0) {
            goto io_fail;
        }
        q2sim_note_write(&s, (uint64_t)off, clen);
        s.crypto_offset = (uint64_t)off;
        s.crypto_len = luks_len;
    }
    if (o.prealloc == PREALLOC_MODE_METADATA ||
        (o.data_file && o.prealloc != PREALLOC_MODE_OFF)) {
        ret = q2sim_preallocate_metadata(&s, o.size, &end);
    } else if (o.prealloc != PREALLOC_MODE_OFF) {
        ret = q2sim_preallocate_data(&s, o.size, o.prealloc, errp);
        if (ret < 0 && errp && *errp) {
            error_prepend(errp, "qcow2: %s: cannot preallocate: ", filename);
            goto out;
        }
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* The live structures: refcount blocks, tables, header. */
    for (size_t i = 0; i < s.nb_rb; i++) {
        ret = bdrv_pwrite(s.file, (int64_t)s.rb_offsets[i], (int64_t)s.cs, s.rb_bufs[i], 0);
        if (ret < 0) {
            goto io_fail;
        }
    }
    ret = q2sim_write_table(&s, s.reftable_offset, s.reftable, s.reftable_size, s.reftable_size * 8);
    if (ret == 0 && s.l1_size) {
        ret = q2sim_write_table(&s, s.l1_offset, s.l1, s.l1_size, s.l1_size * 8);
    }
    if (ret < 0) {
        goto io_fail;
    }
    hdr = calloc(1, s.cs);
    if (!hdr) {
        ret = -ENOMEM;
        goto nomem;
    }
    ret = build_header(&s, &o, o.size, hdr, errp, filename);
    if (ret < 0) {
        goto out;
    }
    ret = bdrv_pwrite(s.file, 0, (int64_t)s.cs, hdr, 0);
    if (ret < 0) {
        goto io_fail;
    }
    if (end > (data ? (uint64_t)bdrv_getlength(data->bs) : s.file_len)) {
        /* metadata preallocation: the file reaches the end of the last cluster */
        ret = bdrv_truncate(data ? data : s.file, (int64_t)end, false,
                            o.prealloc == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : o.prealloc,
                            0, errp);
        if (ret < 0) {
            error_prepend(errp, "qcow2: %s: cannot preallocate: ", filename);
            goto out;
        }
    }
    ret = bdrv_flush(s.file->bs);
    if (ret == 0 && data) {
        ret = bdrv_flush(data->bs);
    }
    if (ret < 0) {
        goto io_fail;
    }
    goto out;

nomem:
    error_setg(errp, "qcow2: %s: out of memory laying out the image", filename);
    goto out;
io_fail:
    if (ret == -EFBIG) {
        error_setg(errp, "qcow2: %s: the image needs more metadata than qcow2 allows"
                   " (size %" PRIu64 ", cluster_size %" PRIu64 ")", filename, o.size, s.cs);
    } else {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot write the image", filename);
    }
out:
    free(hdr);
    q2sim_free(&s);
    if (s.file) {
        bdrv_unref_child(NULL, s.file);
    }
    if (data) {
        bdrv_unref_child(NULL, data);
    }
out_opts:
    free(luks);
    free(o.backing_file);
    free(o.backing_fmt);
    free(o.data_file);
    return ret;
}
