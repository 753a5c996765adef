/*
 * qcow2-measure.c - `img measure -O qcow2`: how big a qcow2 file holding an
 * image's data would be, with qemu-img 7.2's figures (qcow2_measure), and
 * the room a qcow2 image's persistent bitmaps take (for any target).
 *
 * The figures are QEMU's estimate, not an exact layout: "fully allocated"
 * is the preallocated size of the virtual size; "required" is that minus
 * the clusters the source has no data in (zero regions skipped, every
 * allocated cluster of the source chain counted).  Users size volumes
 * from them, so they must match qemu-img's to the byte.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2-int.h"

/* QEMU's qcow2_calc_prealloc_size: header, L2 tables, L1, refcounts, data. */
static uint64_t prealloc_size(uint64_t total, uint64_t cs, uint32_t order, bool extl2)
{
    uint64_t meta = cs, aligned = ALIGN_UP(total, cs);
    uint64_t l2e = extl2 ? 16 : 8;
    uint64_t nl2e = ALIGN_UP(aligned / cs, cs / l2e);
    meta += nl2e * l2e;
    uint64_t nl1e = ALIGN_UP(nl2e * l2e / cs, cs / 8);
    meta += nl1e * 8;
    uint64_t table;
    uint64_t blocks = qcow2_refblocks_needed((meta + aligned) / cs, cs, order, false, &table);
    meta += (blocks + table) * cs;
    return meta + aligned;
}

/* Options as qcow2_measure reads them, with its messages: cluster size,
 * version and refcount width differ in wording from create's. */
typedef struct MeasureOpts {
    uint64_t luks_bytes;            /* the LUKS area (encrypt.format=luks), 0 without */
    bool extl2, has_backing;
    uint64_t cluster_size, refcount_bits, size;
    int version;
    PreallocMode prealloc;
} MeasureOpts;

static int measure_opts(OptDict *opts, MeasureOpts *m, Error **errp)
{
    static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };
    memset(m, 0, sizeof(*m));
    if (optdict_take_bool(opts, "extended_l2", false, &m->extl2, errp) < 0 ||
        optdict_take_size(opts, "cluster_size", 65536, &m->cluster_size, errp) < 0) {
        return -EINVAL;
    }
    uint64_t cs = m->cluster_size;
    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between 512 and 2048k");
        return -EINVAL;
    }
    if (m->extl2 && cs < 16384) {
        error_setg(errp, "Extended L2 entries are only supported with cluster sizes of at"
                   " least 16384 bytes");
        return -EINVAL;
    }
    char *compat = NULL;
    optdict_take_str(opts, "compat", NULL, &compat);
    m->version = 3;
    if (compat && !strcmp(compat, "0.10")) {
        m->version = 2;
    } else if (compat && strcmp(compat, "1.1")) {
        error_setg(errp, "Invalid compatibility level: '%s'", compat);
        free(compat);
        return -EINVAL;
    }
    free(compat);
    if (optdict_take_size(opts, "refcount_bits", 16, &m->refcount_bits, errp) < 0) {
        return -EINVAL;
    }
    uint64_t rb = m->refcount_bits;
    if (!rb || rb > 64 || (rb & (rb - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not exceed 64 bits");
        return -EINVAL;
    }
    if (m->version < 3 && rb != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require compatibility level"
                   " 1.1 or above (use compat=1.1 or greater)");
        return -EINVAL;
    }
    char *pa = NULL;
    optdict_take_str(opts, "preallocation", NULL, &pa);
    m->prealloc = PREALLOC_MODE_OFF;
    if (pa) {
        int i = 0;
        while (prealloc_names[i] && strcmp(prealloc_names[i], pa)) {
            i++;
        }
        if (!prealloc_names[i]) {
            error_setg(errp, "invalid parameter value: %s", pa);
            free(pa);
            return -EINVAL;
        }
        m->prealloc = (PreallocMode)i;
        free(pa);
    }
    char *backing = NULL;
    optdict_take_str(opts, "backing_file", NULL, &backing);
    m->has_backing = backing != NULL;
    free(backing);
    char *encrypt = NULL;
    optdict_take_str(opts, "encrypt.format", NULL, &encrypt);
    bool luks = encrypt && !strcmp(encrypt, "luks");
    free(encrypt);
    m->luks_bytes = 0;
    if (luks) {
        /* QEMU's qcrypto_block_calculate_payload_offset: 4 KiB of header, 8
         * slots of key material (key bytes x 4000 stripes, 4 KiB aligned) */
        char *alg = NULL, *mode = NULL;
        unsigned bits = 256;
        optdict_take_str(opts, "encrypt.cipher-alg", NULL, &alg);
        optdict_take_str(opts, "encrypt.cipher-mode", NULL, &mode);
        if (alg && sscanf(alg, "%*[a-z0-9]-%u", &bits) != 1) {
            error_setg(errp, "Parameter 'encrypt.cipher-alg' does not accept value '%s'", alg);
            free(alg);
            free(mode);
            return -EINVAL;
        }
        uint64_t key = bits / 8 * (mode && strcmp(mode, "xts") ? 1 : 2);
        m->luks_bytes = 4096 + 8 * ALIGN_UP(key * 4000, (uint64_t)4096);
        free(alg);
        free(mode);
    }
    return optdict_take_size(opts, "size", 0, &m->size, errp) < 0 ? -EINVAL : 0;
}

/* Bytes of clusters in_bs (and its backing chain) has data in, counted as
 * qcow2_measure does: a data run is extended to its cluster's end, and the
 * run's offset into its first cluster is added as well. */
static int64_t allocated_bytes(BlockDriverState *in_bs, int64_t ssize, uint64_t cs,
                               Error **errp)
{
    uint64_t required = 0;
    int64_t pnum = 0;
    for (int64_t offset = 0; offset < ssize; offset += pnum) {
        int ret = bdrv_block_status_above(in_bs, NULL, offset, ssize - offset, &pnum, NULL,
                                          NULL);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Unable to get block status");
            return ret;
        }
        if (ret & BDRV_BLOCK_ZERO) {
            continue;    /* no backing file: zeros need no cluster */
        }
        if ((ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED)) ==
            (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED)) {
            pnum = (int64_t)ALIGN_UP((uint64_t)(offset + pnum), cs) - offset;
            required += (uint64_t)offset % cs + (uint64_t)pnum;
        }
    }
    return (int64_t)required;
}

int qcow2_measure(OptDict *opts, BlockDriverState *in_bs, BlockMeasureInfo *info, Error **errp)
{
    MeasureOpts m;
    int ret = measure_opts(opts, &m, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t cs = m.cluster_size, required = 0;
    uint64_t vsize = ALIGN_UP(m.size, cs);
    uint64_t l2e = m.extl2 ? 16 : 8;
    if (DIV_ROUND_UP(vsize / cs, cs / l2e) * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "The image size is too large (try using a larger cluster size)");
        return -EFBIG;
    }
    if (in_bs) {
        int64_t ssize = bdrv_getlength(in_bs);
        if (ssize < 0) {
            error_setg_errno(errp, (int)-ssize, "Unable to get image virtual_size");
            return (int)ssize;
        }
        vsize = ALIGN_UP((uint64_t)ssize, cs);
        if (m.has_backing) {
            /* The new backing file may share nothing with the input. */
            required = vsize;
        } else {
            int64_t r = allocated_bytes(in_bs, ssize, cs, errp);
            if (r < 0) {
                return (int)r;
            }
            required = (uint64_t)r;
        }
    }
    if (m.prealloc == PREALLOC_MODE_FULL || m.prealloc == PREALLOC_MODE_FALLOC) {
        required = vsize;
    }
    uint32_t order = (uint32_t)__builtin_ctzll(m.refcount_bits);
    info->fully_allocated = prealloc_size(vsize, cs, order, m.extl2);
    /* Clusters the data does not need come off; their metadata stays. */
    info->required = info->fully_allocated - vsize + required;
    info->fully_allocated += ALIGN_UP(m.luks_bytes, cs);
    info->required += ALIGN_UP(m.luks_bytes, cs);
    if (m.version >= 3 && in_bs && bdrv_bitmaps_size(in_bs, cs, &info->bitmaps) == 0) {
        info->has_bitmaps = true;
    }
    return 0;
}

int qcow2_bitmaps_size(BlockDriverState *bs, uint64_t cluster_size, uint64_t *size)
{
    BDRVQcow2State *s = bs->opaque;
    *size = 0;
    if (s->h.version < 3) {
        return -ENOTSUP;
    }
    /* Bitmaps a program without bitmap support left behind are not loaded
     * (read_bitmaps_ext ignores them): they do not count, as in QEMU. */
    if (!s->nb_bitmaps || !(s->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    uint8_t *dir = malloc(s->bitmap_directory_size + 1);
    if (!dir) {
        return -ENOMEM;
    }
    int ret = bdrv_pread(bs->file, (int64_t)s->bitmap_directory_offset,
                         (int64_t)s->bitmap_directory_size, dir, 0);
    if (ret < 0) {
        free(dir);
        return ret;
    }
    uint64_t vsize = (uint64_t)bdrv_get_total_bytes(bs), dir_bytes = 0, pos = 0;
    for (uint32_t b = 0; b < s->nb_bitmaps; b++) {
        if (pos + 24 > s->bitmap_directory_size) {
            free(dir);
            return -EINVAL;
        }
        uint8_t gbits = dir[pos + 17];
        uint16_t nsize = qcow2_ld16(dir, pos + 18);
        uint32_t extra = qcow2_ld32(dir, pos + 20);
        pos += ALIGN_UP(24 + (uint64_t)extra + nsize, 8);
        if (pos > s->bitmap_directory_size || gbits > 63) {
            free(dir);
            return -EINVAL;
        }
        /* Assume every bit's cluster allocated, plus its table. */
        uint64_t bits = DIV_ROUND_UP(vsize, UINT64_C(1) << gbits);
        uint64_t clusters = DIV_ROUND_UP(DIV_ROUND_UP(bits, 8), cluster_size);
        *size += clusters * cluster_size + ALIGN_UP(clusters * 8, cluster_size);
        dir_bytes += ALIGN_UP(24 + (uint64_t)nsize, 8);
    }
    *size += ALIGN_UP(dir_bytes, cluster_size);
    free(dir);
    return 0;
}
