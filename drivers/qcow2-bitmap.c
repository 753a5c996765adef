/*
 * qcow2-bitmap.c - persistent dirty bitmaps (qcow2 spec "Bitmaps extension",
 * QEMU 7.2's block/qcow2-bitmap.c behaviour).
 *
 * On disk: the header extension names a directory of entries (table offset
 * and size, flags in_use/auto, type 1, granularity bits, name); each
 * bitmap's table has one entry per cluster of bitmap data: 0 (all zeros),
 * 1 (all ones) or the offset of a data cluster.  Bit i of the data (bit i%8
 * of byte i/8) covers guest bytes [i << granularity_bits, (i + 1) << ...).
 *
 * Every open checks the directory as QEMU's bitmap_list_load does and
 * loads every consistent bitmap's data into memory (read-only and check
 * opens too, as QEMU's: info, convert --bitmaps and merge read them); a
 * writable open also marks them in use on disk (directory rewritten in
 * place); while open, every
 * write, zero write and discard sets the bits of the range in the enabled
 * ones (qcow2_bitmaps_record: atomic or, no lock, no allocation); a clean
 * close stores them all again (new data clusters and tables, a new
 * directory written and flushed before the header names it, then the old
 * clusters freed) with in_use clear.  A crash leaves them in use:
 * inconsistent, never silently wrong.  Bitmaps found in use are kept as
 * they are (their entry and clusters untouched) and cannot be used, only
 * removed.  `img bitmap` works on the in-memory set (qcow2_bitmap_op) and
 * the close stores the result, as qemu-img bitmap does, but for a remove:
 * a new directory without the bitmap goes to disk and its clusters are
 * freed at once, as QEMU's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2-int.h"

#define BME_MAX_TABLE_SIZE       0x8000000U
#define BME_MAX_PHYS_SIZE        0x20000000U
#define BME_MAX_GRANULARITY_BITS 31
#define BME_MIN_GRANULARITY_BITS 9
#define BME_MAX_NAME_SIZE        1023
#define BME_FLAG_IN_USE          (1U << 0)
#define BME_FLAG_AUTO            (1U << 1)
#define BME_RESERVED_FLAGS       (~(BME_FLAG_IN_USE | BME_FLAG_AUTO))
#define BME_TE_RESERVED_MASK     0xff000000000001feULL
#define BME_TE_OFFSET_MASK       0x00fffffffffffe00ULL
#define BME_TE_ALL_ONES          1ULL
#define BT_DIRTY_TRACKING_BITMAP 1
#define BME_DIR_ENTRY_SIZE       24

/* A bitmap's bits in memory; replaced whole (and the old one kept until
 * close) when the image is resized, so lock-free writers never see a
 * size that does not match the array. */
typedef struct Qcow2BitmapMem {
    uint64_t nb_bits;
    struct Qcow2BitmapMem *older;
    uint64_t words[];
} Qcow2BitmapMem;

typedef struct Qcow2Bitmap {
    char *name;
    uint64_t table_offset;       /* on disk, as loaded (0: none yet) */
    uint32_t table_size;
    uint32_t flags;              /* as on disk */
    uint8_t granularity_bits;
    bool inconsistent;           /* in use when loaded: kept as it is */
    bool enabled;                /* records writes (stored as the auto flag) */
    uint64_t *old_table;         /* host-endian entries as loaded, to free at store */
    Qcow2BitmapMem *mem;         /* atomic; NULL when inconsistent */
} Qcow2Bitmap;

struct Qcow2Bitmaps {
    Qcow2Bitmap *bm;
    uint32_t nb, alloc;
    bool dirty_dir;              /* set changed: store even with nothing loaded */
    /* What qcow2_bitmaps_record walks: the enabled bitmaps, fixed while
     * requests run (img bitmap changes the set with no request in flight). */
    Qcow2Bitmap **rec;
    uint32_t nb_rec;
};


static uint64_t bm_nb_bits(uint64_t disk_size, uint8_t gbits)
{
    return DIV_ROUND_UP(disk_size, UINT64_C(1) << gbits);
}

/* Clusters of table a bitmap of nb_bits needs (QEMU serialises whole
 * 64-bit words). */
static uint64_t bm_table_size(const BDRVQcow2State *s, uint64_t nb_bits)
{
    return DIV_ROUND_UP(DIV_ROUND_UP(nb_bits, 64) * 8, s->cluster_size);
}

static Qcow2BitmapMem *bm_mem_new(uint64_t nb_bits)
{
    uint64_t words = DIV_ROUND_UP(nb_bits, 64);
    if (words > (SIZE_MAX - sizeof(Qcow2BitmapMem)) / 8) {
        return NULL;
    }
    Qcow2BitmapMem *m = calloc(1, sizeof(*m) + (size_t)words * 8);
    if (m) {
        m->nb_bits = nb_bits;
    }
    return m;
}

static void bm_mem_free(Qcow2BitmapMem *m)
{
    while (m) {
        Qcow2BitmapMem *next = m->older;
        free(m);
        m = next;
    }
}

/* Set bits [first, last] (inclusive) of m. */
static void bm_mem_set(Qcow2BitmapMem *m, uint64_t first, uint64_t last)
{
    if (first >= m->nb_bits) {
        return;
    }
    if (last >= m->nb_bits) {
        last = m->nb_bits - 1;
    }
    uint64_t w = first / 64, lw = last / 64;
    for (; w <= lw; w++) {
        uint64_t lo = w == first / 64 ? first % 64 : 0;
        uint64_t hi = w == lw ? last % 64 : 63;
        uint64_t mask = (hi == 63 ? ~0ULL : ((1ULL << (hi + 1)) - 1)) & ~((1ULL << lo) - 1);
        if ((__atomic_load_n(&m->words[w], __ATOMIC_RELAXED) & mask) != mask) {
            __atomic_fetch_or(&m->words[w], mask, __ATOMIC_RELAXED);
        }
    }
}

static bool bm_mem_get(const Qcow2BitmapMem *m, uint64_t i)
{
    return (__atomic_load_n(&m->words[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

void qcow2_bitmaps_record(BDRVQcow2State *s, uint64_t offset, uint64_t bytes)
{
    struct Qcow2Bitmaps *b = s->bitmaps;

    if (!bytes) {
        return;
    }
    for (uint32_t i = 0; i < b->nb_rec; i++) {
        Qcow2Bitmap *bm = b->rec[i];
        Qcow2BitmapMem *m = __atomic_load_n(&bm->mem, __ATOMIC_ACQUIRE);
        if (m) {
            bm_mem_set(m, offset >> bm->granularity_bits,
                       (offset + bytes - 1) >> bm->granularity_bits);
        }
    }
}

void qcow2_note_discard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    qcow2_bitmaps_note(bs->opaque, offset, bytes);
}

static void bm_free_one(Qcow2Bitmap *bm)
{
    free(bm->name);
    free(bm->old_table);
    bm_mem_free(bm->mem);
    memset(bm, 0, sizeof(*bm));
}

static void bitmaps_free(struct Qcow2Bitmaps *b)
{
    if (!b) {
        return;
    }
    for (uint32_t i = 0; i < b->nb; i++) {
        bm_free_one(&b->bm[i]);
    }
    free(b->bm);
    free(b->rec);
    free(b);
}

static int rebuild_rec(struct Qcow2Bitmaps *b)
{
    Qcow2Bitmap **rec = calloc(b->nb ? b->nb : 1, sizeof(*rec));
    uint32_t n = 0;
    if (!rec) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < b->nb; i++) {
        if (b->bm[i].enabled && b->bm[i].mem) {
            rec[n++] = &b->bm[i];
        }
    }
    free(b->rec);
    b->rec = rec;
    b->nb_rec = n;
    return 0;
}

/* ---- loading (QEMU's bitmap_list_load, check_dir_entry, load_bitmap) ---- */

static int check_dir_entry(BDRVQcow2State *s, uint64_t len, uint64_t toff, uint32_t tsize,
                           uint32_t flags, uint8_t type, uint8_t gbits, uint16_t nsize)
{
    if (tsize == 0 || toff == 0 || qcow2_offset_into_cluster(s, toff) ||
        tsize > BME_MAX_TABLE_SIZE || gbits > BME_MAX_GRANULARITY_BITS ||
        gbits < BME_MIN_GRANULARITY_BITS || (flags & BME_RESERVED_FLAGS) ||
        nsize > BME_MAX_NAME_SIZE || type != BT_DIRTY_TRACKING_BITMAP) {
        return -EINVAL;
    }
    uint64_t phys = (uint64_t)tsize * s->cluster_size;
    if (phys > BME_MAX_PHYS_SIZE) {
        return -EINVAL;
    }
    /* A bitmap left in use by a resize may be too small: only a
     * consistent one must cover the image. */
    if (!(flags & BME_FLAG_IN_USE) && len > ((phys * 8) << gbits)) {
        return -EINVAL;
    }
    return 0;
}

static int list_load(BlockDriverState *bs, struct Qcow2Bitmaps **out, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *iname = qcow2_image_name(bs);
    uint64_t size = s->bitmap_directory_size, len = (uint64_t)bdrv_get_total_bytes(bs);
    struct Qcow2Bitmaps *b = calloc(1, sizeof(*b));
    uint8_t *dir = NULL;
    int ret = -EINVAL;

    *out = NULL;
    if (!b) {
        error_setg(errp, "qcow2: %s: out of memory for the bitmap directory", iname);
        return -ENOMEM;
    }
    if (!s->nb_bitmaps || !(s->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        *out = b;
        return 0;
    }
    if (size == 0) {
        error_setg(errp, "qcow2: %s: Requested bitmap directory size is zero", iname);
        goto fail;
    }
    if (size > QCOW2_MAX_BITMAP_DIR_SIZE) {
        error_setg(errp, "qcow2: %s: Requested bitmap directory size is too big", iname);
        goto fail;
    }
    dir = malloc(size);
    b->bm = calloc(s->nb_bitmaps, sizeof(*b->bm));
    if (!dir || !b->bm) {
        error_setg(errp, "qcow2: %s: out of memory for the bitmap directory", iname);
        ret = -ENOMEM;
        goto fail;
    }
    b->alloc = s->nb_bitmaps;
    ret = bdrv_pread(bs->file, (int64_t)s->bitmap_directory_offset, (int64_t)size, dir, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: Failed to read bitmap directory", iname);
        goto fail;
    }
    ret = -EINVAL;
    uint64_t pos = 0;
    while (pos < size) {
        if (pos + BME_DIR_ENTRY_SIZE > size) {
            goto broken;
        }
        if (b->nb + 1 > s->nb_bitmaps) {
            error_setg(errp, "qcow2: %s: More bitmaps found than specified in header"
                       " extension", iname);
            goto fail;
        }
        uint64_t toff = qcow2_ld64(dir, pos);
        uint32_t tsize = qcow2_ld32(dir, pos + 8), flags = qcow2_ld32(dir, pos + 12);
        uint8_t type = dir[pos + 16], gbits = dir[pos + 17];
        uint16_t nsize = qcow2_ld16(dir, pos + 18);
        uint32_t extra = qcow2_ld32(dir, pos + 20);
        uint64_t next = pos + ALIGN_UP(BME_DIR_ENTRY_SIZE + (uint64_t)extra + nsize, 8);
        if (next > size) {
            goto broken;
        }
        if (extra) {
            error_setg(errp, "qcow2: %s: Bitmap extra data is not supported", iname);
            goto fail;
        }
        const char *nfield = (const char *)dir + pos + BME_DIR_ENTRY_SIZE;
        if (check_dir_entry(s, len, toff, tsize, flags, type, gbits, nsize) < 0) {
            error_setg(errp, "qcow2: %s: Bitmap '%.*s' doesn't satisfy the constraints",
                       iname, (int)nsize, nfield);
            goto fail;
        }
        Qcow2Bitmap *bm = &b->bm[b->nb++];
        bm->name = strndup(nfield, nsize);
        if (!bm->name) {
            ret = -ENOMEM;
            error_setg(errp, "qcow2: %s: out of memory for the bitmap directory", iname);
            goto fail;
        }
        bm->table_offset = toff;
        bm->table_size = tsize;
        bm->flags = flags;
        bm->granularity_bits = gbits;
        bm->inconsistent = flags & BME_FLAG_IN_USE;
        bm->enabled = flags & BME_FLAG_AUTO;
        pos = next;
    }
    if (b->nb != s->nb_bitmaps) {
        error_setg(errp, "qcow2: %s: Less bitmaps found than specified in header extension",
                   iname);
        goto fail;
    }
    free(dir);
    *out = b;
    return 0;

broken:
    error_setg(errp, "qcow2: %s: Broken bitmap directory", iname);
fail:
    free(dir);
    bitmaps_free(b);
    return ret;
}

/* Read bm's table (checked as QEMU's check_table_entry) into bm->old_table. */
static int table_load(BlockDriverState *bs, Qcow2Bitmap *bm, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *t = malloc((size_t)bm->table_size * 8);
    int ret;

    if (!t) {
        error_setg(errp, "qcow2: %s: out of memory for bitmap '%s' table",
                   qcow2_image_name(bs), bm->name);
        return -ENOMEM;
    }
    ret = bdrv_pread(bs->file, (int64_t)bm->table_offset, (int64_t)bm->table_size * 8, t, 0);
    if (ret < 0) {
        goto fail;
    }
    for (uint32_t i = 0; i < bm->table_size; i++) {
        uint64_t e = be64toh(t[i]), off = e & BME_TE_OFFSET_MASK;
        t[i] = e;
        if ((e & BME_TE_RESERVED_MASK) ||
            (off && ((e & BME_TE_ALL_ONES) || qcow2_offset_into_cluster(s, off)))) {
            ret = -EINVAL;
            goto fail;
        }
    }
    free(bm->old_table);
    bm->old_table = t;
    return 0;
fail:
    free(t);
    error_setg_errno(errp, -ret, "qcow2: %s: Could not read bitmap_table table from image"
                     " for bitmap '%s'", qcow2_image_name(bs), bm->name);
    return ret;
}

/* Table and data of a consistent bitmap into bm->mem. */
static int data_load(BlockDriverState *bs, Qcow2Bitmap *bm, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t nb_bits = bm_nb_bits((uint64_t)bdrv_get_total_bytes(bs), bm->granularity_bits);
    uint64_t bytes = DIV_ROUND_UP(nb_bits, 64) * 8;
    uint8_t *buf = NULL;
    Qcow2BitmapMem *m = NULL;
    int ret = table_load(bs, bm, errp);

    if (ret < 0) {
        return ret;
    }
    ret = -EINVAL;
    if (bm_table_size(s, nb_bits) != bm->table_size) {
        goto fail;
    }
    m = bm_mem_new(nb_bits);
    buf = malloc(s->cluster_size);
    if (!m || !buf) {
        ret = -ENOMEM;
        goto fail;
    }
    uint8_t *dst = (uint8_t *)m->words;
    for (uint32_t i = 0; i < bm->table_size; i++) {
        uint64_t e = bm->old_table[i], off = e & BME_TE_OFFSET_MASK;
        uint64_t start = (uint64_t)i * s->cluster_size;
        size_t n = (size_t)MIN((uint64_t)s->cluster_size, bytes - start);
        if (off) {
            ret = bdrv_pread(bs->file, (int64_t)off, s->cluster_size, buf, 0);
            if (ret < 0) {
                goto fail;
            }
            memcpy(dst + start, buf, n);
        } else if (e & BME_TE_ALL_ONES) {
            memset(dst + start, 0xff, n);
        }
    }
    for (uint64_t w = 0; w < bytes / 8; w++) {
        m->words[w] = le64toh(m->words[w]);
    }
    /* Bits past the end are not part of the bitmap. */
    if (nb_bits % 64) {
        m->words[nb_bits / 64] &= (1ULL << (nb_bits % 64)) - 1;
    }
    free(buf);
    bm->mem = m;
    return 0;
fail:
    free(buf);
    free(m);
    error_setg_errno(errp, -ret, "qcow2: %s: Could not read bitmap '%s' from image",
                     qcow2_image_name(bs), bm->name);
    return ret;
}

/* ---- the directory on disk ---- */

/* Whether bm has an entry in a directory written now: bitmaps added
 * since the open have no table yet (QEMU keeps them in memory until the
 * close stores them), and skip is being removed. */
static bool dir_has(const Qcow2Bitmap *bm, const Qcow2Bitmap *skip, bool stored_only)
{
    return bm != skip && (bm->table_offset || !stored_only);
}

static uint64_t dir_size(const struct Qcow2Bitmaps *b, const Qcow2Bitmap *skip, bool stored_only)
{
    uint64_t size = 0;
    for (uint32_t i = 0; i < b->nb; i++) {
        if (dir_has(&b->bm[i], skip, stored_only)) {
            size += ALIGN_UP(BME_DIR_ENTRY_SIZE + strlen(b->bm[i].name), 8);
        }
    }
    return size;
}

static uint8_t *dir_build(const struct Qcow2Bitmaps *b, uint64_t size, const Qcow2Bitmap *skip)
{
    uint8_t *dir = calloc(1, size ? size : 1);
    uint64_t pos = 0;
    if (!dir) {
        return NULL;
    }
    for (uint32_t i = 0; i < b->nb; i++) {
        const Qcow2Bitmap *bm = &b->bm[i];
        if (!dir_has(bm, skip, true)) {
            continue;
        }
        size_t nl = strlen(bm->name);
        qcow2_st64(dir, pos, bm->table_offset);
        qcow2_st32(dir, pos + 8, bm->table_size);
        qcow2_st32(dir, pos + 12, bm->flags);
        dir[pos + 16] = BT_DIRTY_TRACKING_BITMAP;
        dir[pos + 17] = bm->granularity_bits;
        qcow2_st16(dir, pos + 18, (uint16_t)nl);
        qcow2_st32(dir, pos + 20, 0);
        memcpy(dir + pos + BME_DIR_ENTRY_SIZE, bm->name, nl);
        pos += ALIGN_UP(BME_DIR_ENTRY_SIZE + nl, 8);
    }
    return dir;
}

/* The directory rewritten where it is, same size (QEMU's
 * update_ext_header_and_dir_in_place: only flags changed). */
static int coroutine_fn dir_write_in_place(BlockDriverState *bs, struct Qcow2Bitmaps *b)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t size = dir_size(b, NULL, true);
    if (size != s->bitmap_directory_size) {
        return -EINVAL;
    }
    /* A crafted directory may lie on other metadata: QEMU's overlap check
     * of an in-place store (the directory itself excepted). */
    unsigned ol = s->overlap_check;
    s->overlap_check &= ~(unsigned)QCOW2_OL_BITMAP_DIRECTORY;
    bool bad = qcow2_overlaps_metadata(bs, s->bitmap_directory_offset, size, 0);
    s->overlap_check = ol;
    if (bad) {
        return -EIO;
    }
    uint8_t *dir = dir_build(b, size, NULL);
    if (!dir) {
        return -ENOMEM;
    }
    int ret = bdrv_pwrite(bs->file, (int64_t)s->bitmap_directory_offset, (int64_t)size, dir, 0);
    free(dir);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    return ret;
}

/* ---- open and close ---- */

typedef struct {
    BlockDriverState *bs;
    struct Qcow2Bitmaps *b;
    Error **errp;
    int ret;
} OpenCo;

static void coroutine_fn mark_in_use_co(void *opaque)
{
    OpenCo *o = opaque;
    o->ret = dir_write_in_place(o->bs, o->b);
}

int qcow2_bitmaps_open(BlockDriverState *bs, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b;
    bool needs_update = false;
    int ret;

    ret = list_load(bs, &b, errp);
    if (ret < 0) {
        return ret;
    }
    /* Every open loads the consistent bitmaps, as QEMU's
     * qcow2_load_dirty_bitmaps: a read-only one (info, a convert or merge
     * source) and a check's too, so a bad table fails their open as it
     * fails QEMU's.  Only a writable open (not a check's: the checker
     * counts the bitmaps' clusters itself and a repair must leave them as
     * they are) marks them in use and records writes. */
    bool writable = (flags & BDRV_O_RDWR) && !(flags & BDRV_O_CHECK);
    if (writable && b->nb && s->h.version < 3) {
        bitmaps_free(b);
        error_setg(errp, "qcow2: %s: a version 2 image cannot have bitmaps",
                   qcow2_image_name(bs));
        return -EINVAL;
    }
    for (uint32_t i = 0; i < b->nb; i++) {
        Qcow2Bitmap *bm = &b->bm[i];
        if (bm->inconsistent) {
            continue;
        }
        ret = data_load(bs, bm, errp);
        if (ret < 0) {
            bitmaps_free(b);
            return ret;
        }
        if (writable) {
            bm->flags |= BME_FLAG_IN_USE;
            needs_update = true;
        }
    }
    if (!writable) {
        s->bitmaps = b;
        return 0;
    }
    if (needs_update) {
        OpenCo o = { bs, b, errp, 0 };
        aio_co_run_sync(mark_in_use_co, &o);
        if (o.ret < 0) {
            error_setg_errno(errp, -o.ret, "qcow2: %s: cannot mark the bitmaps in use",
                             qcow2_image_name(bs));
            bitmaps_free(b);
            return o.ret;
        }
    }
    if (rebuild_rec(b) < 0) {
        bitmaps_free(b);
        error_setg(errp, "qcow2: %s: out of memory for the bitmaps", qcow2_image_name(bs));
        return -ENOMEM;
    }
    s->bitmaps = b;
    s->bitmaps_writable = true;
    return 0;
}

/* Free a table's data clusters and the table; a cluster that is other
 * metadata (a crafted table) is not freed (the overlap check reports it). */
static void coroutine_fn free_table(BlockDriverState *bs, uint64_t toff, uint32_t tsize,
                                    const uint64_t *table)
{
    BDRVQcow2State *s = bs->opaque;
    for (uint32_t i = 0; table && i < tsize; i++) {
        uint64_t off = table[i] & BME_TE_OFFSET_MASK;
        if (off && !qcow2_overlaps_metadata(bs, off, s->cluster_size, 0)) {
            qcow2_update_refcount(bs, off, s->cluster_size, true);
        }
    }
    uint64_t len = ALIGN_UP((uint64_t)tsize * 8, s->cluster_size);
    if (toff && tsize && !qcow2_overlaps_metadata(bs, toff, len, 0)) {
        qcow2_update_refcount(bs, toff, len, true);
    }
}

/* Write bm's data and a new table (s->lock held); bm->table_* name it. */
static int coroutine_fn store_one(BlockDriverState *bs, Qcow2Bitmap *bm, uint8_t *buf)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BitmapMem *m = bm->mem;
    uint64_t bytes = DIV_ROUND_UP(m->nb_bits, 64) * 8;
    uint64_t tsize = bm_table_size(s, m->nb_bits);
    uint64_t *t = calloc(tsize ? tsize : 1, 8);
    int64_t off;
    int ret = 0;

    if (!t) {
        return -ENOMEM;
    }
    /* A writer that loaded the array a resize replaced may have set bits
     * in it after the copy: no one writes now, so fold them in. */
    uint64_t keep = m->nb_bits;       /* what every resize since kept */
    for (Qcow2BitmapMem *o = m->older; o; o = o->older) {
        keep = MIN(keep, o->nb_bits);
        for (uint64_t w = 0; w < keep / 64; w++) {
            m->words[w] |= o->words[w];
        }
        if (keep % 64) {
            m->words[keep / 64] |= o->words[keep / 64] & ((1ULL << (keep % 64)) - 1);
        }
    }
    for (uint64_t i = 0; i < tsize; i++) {
        uint64_t start = i * s->cluster_size, n = MIN((uint64_t)s->cluster_size, bytes - start);
        bool any = false;
        for (uint64_t w = start / 8; w < (start + n) / 8; w++) {
            if (__atomic_load_n(&m->words[w], __ATOMIC_RELAXED)) {
                any = true;
                break;
            }
        }
        if (!any) {
            continue;
        }
        memset(buf, 0, s->cluster_size);
        for (uint64_t w = start / 8; w < (start + n) / 8; w++) {
            uint64_t v = htole64(__atomic_load_n(&m->words[w], __ATOMIC_RELAXED));
            memcpy(buf + (w * 8 - start), &v, 8);
        }
        off = qcow2_alloc_clusters(bs, s->cluster_size);
        if (off < 0) {
            ret = (int)off;
            goto fail;
        }
        t[i] = (uint64_t)off;
        ret = bdrv_pwrite(bs->file, off, s->cluster_size, buf, 0);
        if (ret < 0) {
            goto fail;
        }
    }
    off = qcow2_alloc_clusters(bs, tsize * 8);
    if (off < 0) {
        ret = (int)off;
        goto fail;
    }
    for (uint64_t i = 0; i < tsize; i++) {
        t[i] = htobe64(t[i]);
    }
    ret = bdrv_pwrite(bs->file, off, (int64_t)(tsize * 8), t, 0);
    if (ret < 0) {
        qcow2_update_refcount(bs, (uint64_t)off, tsize * 8, true);
        for (uint64_t i = 0; i < tsize; i++) {
            t[i] = be64toh(t[i]);
        }
        goto fail;
    }
    bm->table_offset = (uint64_t)off;
    bm->table_size = (uint32_t)tsize;
    bm->flags = bm->enabled ? BME_FLAG_AUTO : 0;
    free(t);
    return 0;
fail:
    for (uint64_t i = 0; i < tsize; i++) {
        if (t[i]) {
            qcow2_update_refcount(bs, t[i], s->cluster_size, true);
        }
    }
    free(t);
    return ret;
}

/*
 * Called and returns with s->lock held.  A directory of nb entries (the
 * bitmaps but skip; nb 0: none) goes into new clusters and, with the lock
 * dropped, is flushed with everything it names before the header is pointed
 * at it.  *off is where it went (<= 0: nowhere to give back); a failed
 * header write sets it to 0, as what the header on disk names is unknown
 * then and both directories must stay.
 */
static int coroutine_fn dir_commit(BlockDriverState *bs, struct Qcow2Bitmaps *b,
                                   const Qcow2Bitmap *skip, uint32_t nb, uint64_t size,
                                   int64_t *off)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = 0;

    *off = 0;
    if (nb) {
        uint8_t *dir = dir_build(b, size, skip);
        *off = dir ? qcow2_alloc_clusters(bs, size) : -ENOMEM;
        ret = *off < 0 ? (int)*off : bdrv_pwrite(bs->file, *off, (int64_t)size, dir, 0);
        free(dir);
    }
    co_mutex_unlock(&s->lock);
    if (ret == 0) {
        ret = qcow2_co_flush_to_os(bs);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    co_mutex_lock(&s->lock);
    if (ret == 0) {
        s->nb_bitmaps = nb;
        s->bitmap_directory_offset = nb ? (uint64_t)*off : 0;
        s->bitmap_directory_size = nb ? size : 0;
        if (nb) {
            s->h.autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
        } else {
            s->h.autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
        }
        ret = qcow2_update_header_locked(bs, false, NULL, NULL);
        if (ret < 0) {
            *off = 0;
        }
    }
    return ret;
}

/* QEMU's qcow2_store_persistent_dirty_bitmaps + update_ext_header_and_dir. */
static int coroutine_fn store_all(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;
    uint64_t old_dir_off = s->bitmap_directory_offset, old_dir_size = s->bitmap_directory_size;
    uint64_t *old_off = calloc(b->nb ? b->nb : 1, sizeof(uint64_t));
    uint32_t *old_size = calloc(b->nb ? b->nb : 1, sizeof(uint32_t));
    uint8_t *buf = malloc(s->cluster_size);
    uint32_t stored = 0;
    int ret = -ENOMEM;

    if (!old_off || !old_size || !buf) {
        goto out_nolock;
    }
    co_mutex_lock(&s->lock);
    ret = 0;
    for (uint32_t i = 0; i < b->nb && ret == 0; i++) {
        Qcow2Bitmap *bm = &b->bm[i];
        if (bm->inconsistent || !bm->mem) {
            continue;
        }
        old_off[i] = bm->table_offset;
        old_size[i] = bm->table_size;
        ret = store_one(bs, bm, buf);
        stored = i + 1;
    }
    uint64_t size = dir_size(b, NULL, true);
    int64_t dir_off = 0;
    if (ret == 0) {
        ret = dir_commit(bs, b, NULL, b->nb, size, &dir_off);
    }
    if (ret == 0) {
        /* The old clusters are no one's now. */
        if (old_dir_size && !qcow2_overlaps_metadata(bs, old_dir_off, old_dir_size, 0)) {
            qcow2_update_refcount(bs, old_dir_off, old_dir_size, true);
        }
        for (uint32_t i = 0; i < b->nb; i++) {
            if (old_off[i]) {
                free_table(bs, old_off[i], old_size[i], b->bm[i].old_table);
                free(b->bm[i].old_table);
                b->bm[i].old_table = NULL;
            }
        }
    } else {
        /* Nothing names what was written: give it back (the old bitmaps
         * stay in use on disk). */
        if (dir_off > 0) {
            qcow2_update_refcount(bs, (uint64_t)dir_off, size, true);
        }
        for (uint32_t i = 0; i < stored; i++) {
            Qcow2Bitmap *bm = &b->bm[i];
            if (old_off[i] && bm->table_offset != old_off[i]) {
                uint64_t *t = malloc((size_t)bm->table_size * 8);
                if (t && bdrv_pread(bs->file, (int64_t)bm->table_offset,
                                    (int64_t)bm->table_size * 8, t, 0) == 0) {
                    for (uint32_t j = 0; j < bm->table_size; j++) {
                        t[j] = be64toh(t[j]);
                    }
                    free_table(bs, bm->table_offset, bm->table_size, t);
                }
                free(t);
            }
        }
    }
    co_mutex_unlock(&s->lock);
    if (ret == 0) {
        ret = qcow2_co_flush_to_os(bs);
    }
out_nolock:
    free(old_off);
    free(old_size);
    free(buf);
    return ret;
}

static void coroutine_fn store_co(void *opaque)
{
    OpenCo *o = opaque;
    o->ret = store_all(o->bs);
}

void qcow2_bitmaps_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;

    if (b && s->bitmaps_writable && aio_current() &&
        !(s->h.incompat & QCOW2_INCOMPAT_CORRUPT)) {
        bool any = b->dirty_dir;
        for (uint32_t i = 0; i < b->nb; i++) {
            any |= b->bm[i].mem != NULL;
        }
        if (any) {
            OpenCo o = { bs, b, NULL, 0 };
            aio_co_run_sync(store_co, &o);
            if (o.ret < 0) {
                error_report("qcow2: %s: could not store the bitmaps (%s): they stay in use",
                             qcow2_image_name(bs), strerror(-o.ret));
            }
        }
    }
    s->bitmaps = NULL;
    s->bitmaps_writable = false;
    bitmaps_free(b);
}

/* ---- resize ---- */

int qcow2_bitmaps_truncate_check(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;

    for (uint32_t i = 0; b && i < b->nb; i++) {
        if (b->bm[i].inconsistent) {
            error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used\n"
                       "Try block-dirty-bitmap-remove to delete this bitmap from disk",
                       b->bm[i].name);
            return -ENOTSUP;
        }
    }
    return 0;
}

/* The in-memory bitmaps take the new size (new bits clear), as QEMU's
 * bdrv_dirty_bitmap_truncate; the old arrays stay until close for writers
 * that still hold them. */
int qcow2_bitmaps_truncate(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;

    for (uint32_t i = 0; b && i < b->nb; i++) {
        Qcow2Bitmap *bm = &b->bm[i];
        Qcow2BitmapMem *old = bm->mem;
        if (!old) {
            continue;
        }
        uint64_t nb_bits = bm_nb_bits(size, bm->granularity_bits);
        Qcow2BitmapMem *m = bm_mem_new(nb_bits);
        if (!m) {
            return -ENOMEM;
        }
        uint64_t keep = MIN(nb_bits, old->nb_bits);
        for (uint64_t w = 0; w < DIV_ROUND_UP(keep, 64); w++) {
            m->words[w] = __atomic_load_n(&old->words[w], __ATOMIC_RELAXED);
        }
        if (keep % 64) {
            m->words[keep / 64] &= (1ULL << (keep % 64)) - 1;
        }
        m->older = old;
        __atomic_store_n(&bm->mem, m, __ATOMIC_RELEASE);
    }
    return 0;
}

/* ---- the list (convert --bitmaps) ---- */

int qcow2_bitmap_list(BlockDriverState *bs, BdrvBitmapInfo **list, size_t *nb)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;

    *list = NULL;
    *nb = 0;
    if (s->h.version < 3) {
        return -ENOTSUP;
    }
    if (!b || !b->nb) {
        return 0;
    }
    BdrvBitmapInfo *l = calloc(b->nb, sizeof(*l));
    if (!l) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < b->nb; i++) {
        l[i].name = strdup(b->bm[i].name);
        if (!l[i].name) {
            bdrv_bitmap_list_free(l, i);
            return -ENOMEM;
        }
        l[i].granularity = UINT64_C(1) << b->bm[i].granularity_bits;
        l[i].enabled = b->bm[i].enabled;
        l[i].inconsistent = b->bm[i].inconsistent;
    }
    *list = l;
    *nb = b->nb;
    return 0;
}

/* ---- img info ---- */

void qcow2_bitmaps_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;
    char *json = NULL, *human = NULL;
    size_t jlen = 0, hlen = 0;
    FILE *j, *h;

    if (!b || !b->nb) {
        return;
    }
    j = open_memstream(&json, &jlen);
    h = open_memstream(&human, &hlen);
    if (!j || !h) {
        abort();
    }
    fprintf(j, "[");
    for (uint32_t i = 0; i < b->nb; i++) {
        const Qcow2Bitmap *bm = &b->bm[i];
        uint32_t flags = bm->flags;     /* as on disk */
        fprintf(h, "        [%u]:\n            flags:\n", i);
        fprintf(j, "%s{\"flags\": [", i ? ", " : "");
        int n = 0;
        if (flags & BME_FLAG_IN_USE) {
            fprintf(h, "                [%d]: in-use\n", n++);
            fprintf(j, "\"in-use\"");
        }
        if (flags & BME_FLAG_AUTO) {
            fprintf(h, "                [%d]: auto\n", n++);
            fprintf(j, "%s\"auto\"", n > 1 ? ", " : "");
        }
        fprintf(h, "            name: %s\n            granularity: %" PRIu64 "\n", bm->name,
                UINT64_C(1) << bm->granularity_bits);
        fprintf(j, "], \"name\": \"");
        for (const char *p = bm->name; *p; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '"' || c == '\\') {
                fprintf(j, "\\%c", c);
            } else if (c < 0x20) {
                fprintf(j, "\\u%04x", c);
            } else {
                fputc(c, j);
            }
        }
        fprintf(j, "\", \"granularity\": %" PRIu64 "}", UINT64_C(1) << bm->granularity_bits);
    }
    fprintf(j, "]");
    fclose(j);
    fclose(h);
    /* drop the last newline: the printer adds one */
    if (hlen && human[hlen - 1] == '\n') {
        human[hlen - 1] = 0;
    }
    image_info_add_json(info, "bitmaps", json, human);
    free(json);
    free(human);
}

/* ---- img bitmap (QEMU's qmp_block_dirty_bitmap_* on a qemu-img open) ---- */

static Qcow2Bitmap *bm_find(struct Qcow2Bitmaps *b, const char *name)
{
    for (uint32_t i = 0; b && i < b->nb; i++) {
        if (!strcmp(b->bm[i].name, name)) {
            return &b->bm[i];
        }
    }
    return NULL;
}

static Qcow2Bitmap *bm_lookup(struct Qcow2Bitmaps *b, const char *name, Error **errp)
{
    Qcow2Bitmap *bm = bm_find(b, name);
    if (!bm) {
        error_setg(errp, "Dirty bitmap '%s' not found", name);
    }
    return bm;
}

/* QEMU's bdrv_dirty_bitmap_check(BDRV_BITMAP_DEFAULT): only the in-use
 * state can fail here (nothing else holds the bitmaps). */
static int bm_usable(const Qcow2Bitmap *bm, Error **errp)
{
    if (bm->inconsistent) {
        error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used\n"
                   "Try block-dirty-bitmap-remove to delete this bitmap from disk", bm->name);
        return -EINVAL;
    }
    return 0;
}

static const char *node_name(BlockDriverState *bs)
{
    const char *n = bdrv_get_node_name(bs);
    return n && n[0] ? n : qcow2_image_name(bs);
}

static int bm_add(BlockDriverState *bs, const BdrvBitmapOp *op, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;
    uint64_t gran = op->granularity;
    const char *name = op->name;

    if (!name[0]) {
        error_setg(errp, "Bitmap name cannot be empty");
        return -EINVAL;
    }
    if (op->has_granularity) {
        if (gran < 512 || (gran & (gran - 1))) {
            error_setg(errp, "Granularity must be power of 2 and at least 512");
            return -EINVAL;
        }
    } else {
        /* QEMU's bdrv_get_default_bitmap_granularity */
        gran = MIN((uint64_t)65536, MAX((uint64_t)4096, (uint64_t)s->cluster_size));
    }
    const char *why = NULL;
    char whybuf[80];
    uint32_t gbits = (uint32_t)__builtin_ctzll(gran);
    uint64_t len = (uint64_t)bdrv_get_total_bytes(bs);
    if (bm_find(b, name)) {
        error_setg(errp, "Bitmap already exists: %s", name);
        return -EEXIST;
    }
    if (s->h.version < 3) {
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    } else if (gbits > BME_MAX_GRANULARITY_BITS) {
        snprintf(whybuf, sizeof(whybuf), "Granularity exceeds maximum (%llu bytes)",
                 1ULL << BME_MAX_GRANULARITY_BITS);
        why = whybuf;
    } else {
        uint64_t bytes = DIV_ROUND_UP(DIV_ROUND_UP(len, gran), 8);
        if (bytes > BME_MAX_PHYS_SIZE || bytes > (uint64_t)BME_MAX_TABLE_SIZE * s->cluster_size) {
            why = "Too much space will be occupied by the bitmap. Use larger granularity";
        } else if (strlen(name) > BME_MAX_NAME_SIZE) {
            snprintf(whybuf, sizeof(whybuf), "Name length exceeds maximum (%u characters)",
                     BME_MAX_NAME_SIZE);
            why = whybuf;
        } else if (b->nb + 1 > QCOW2_MAX_BITMAPS) {
            why = "Maximum number of persistent bitmaps is already reached";
        } else if (dir_size(b, NULL, false) + ALIGN_UP(BME_DIR_ENTRY_SIZE + strlen(name), 8) >
                   QCOW2_MAX_BITMAP_DIR_SIZE) {
            why = "Not enough space in the bitmap directory";
        }
    }
    if (why) {
        error_setg(errp, "Can't make bitmap '%s' persistent in '%s': %s", name, node_name(bs),
                   why);
        return -EINVAL;
    }
    if (b->nb == b->alloc) {
        uint32_t n = b->alloc ? b->alloc * 2 : 4;
        Qcow2Bitmap *nbm = realloc(b->bm, (size_t)n * sizeof(*nbm));
        if (!nbm) {
            error_setg(errp, "out of memory");
            return -ENOMEM;
        }
        b->bm = nbm;
        b->alloc = n;
    }
    Qcow2Bitmap nb = { 0 };
    nb.name = strdup(name);
    nb.mem = bm_mem_new(bm_nb_bits(len, (uint8_t)gbits));
    if (!nb.name || !nb.mem) {
        bm_free_one(&nb);
        error_setg(errp, "out of memory");
        return -ENOMEM;
    }
    nb.granularity_bits = (uint8_t)gbits;
    nb.enabled = !op->disabled;
    nb.flags = nb.enabled ? BME_FLAG_AUTO : 0;
    /* QEMU stores the bitmaps it loaded in their order, then the ones
     * created since, newest first: the new one goes after the loaded
     * ones (which have a table), before the ones added earlier.  So
     * convert --bitmaps, adding the source's last first, keeps its order. */
    uint32_t at = 0;
    while (at < b->nb && b->bm[at].table_offset) {
        at++;
    }
    memmove(&b->bm[at + 1], &b->bm[at], (b->nb - at) * sizeof(*b->bm));
    b->bm[at] = nb;
    b->nb++;
    b->dirty_dir = true;
    return 0;
}

/* QEMU's update_ext_header_and_dir: a new directory of the bitmaps that
 * are on disk, but skip (each entry as it is on disk), written and
 * flushed with its refcounts before the header names it; then the old
 * directory's clusters are freed.  A crash leaves the old directory or the
 * new one, at worst with leaked clusters. */
static int coroutine_fn dir_replace(BlockDriverState *bs, struct Qcow2Bitmaps *b,
                                    const Qcow2Bitmap *skip)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old_off = s->bitmap_directory_offset, old_size = s->bitmap_directory_size;
    uint64_t size = dir_size(b, skip, true);
    uint32_t nb = 0;
    int64_t off = 0;

    for (uint32_t i = 0; i < b->nb; i++) {
        nb += dir_has(&b->bm[i], skip, true);
    }
    co_mutex_lock(&s->lock);
    int ret = dir_commit(bs, b, skip, nb, size, &off);
    if (ret == 0) {
        if (old_size && !qcow2_overlaps_metadata(bs, old_off, old_size, 0)) {
            qcow2_update_refcount(bs, old_off, old_size, true);
        }
    } else if (off > 0) {
        qcow2_update_refcount(bs, (uint64_t)off, size, true);
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

typedef struct {
    BlockDriverState *bs;
    Qcow2Bitmap *bm;
    int ret;
} RemoveCo;

static void coroutine_fn remove_co(void *opaque)
{
    RemoveCo *r = opaque;
    BDRVQcow2State *s = r->bs->opaque;

    r->ret = dir_replace(r->bs, s->bitmaps, r->bm);
    if (r->ret == 0) {
        co_mutex_lock(&s->lock);
        free_table(r->bs, r->bm->table_offset, r->bm->table_size, r->bm->old_table);
        co_mutex_unlock(&s->lock);
    }
}

/* QEMU's qcow2_co_remove_persistent_dirty_bitmap: a bitmap on disk leaves
 * the directory at once and its clusters are freed then, not at close. */
static int bm_remove(BlockDriverState *bs, Qcow2Bitmap *bm, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    struct Qcow2Bitmaps *b = s->bitmaps;

    if (bm->table_offset) {
        if (!bm->old_table && table_load(bs, bm, errp) < 0) {
            return -EIO;
        }
        RemoveCo r = { bs, bm, 0 };
        aio_co_run_sync(remove_co, &r);
        if (r.ret < 0) {
            error_setg_errno(errp, -r.ret, "qcow2: %s: cannot write the bitmap directory",
                             qcow2_image_name(bs));
            return r.ret;
        }
    }
    uint32_t i = (uint32_t)(bm - b->bm);
    bm_free_one(bm);
    memmove(&b->bm[i], &b->bm[i + 1], (b->nb - i - 1) * sizeof(*bm));
    b->nb--;
    b->dirty_dir = true;
    return 0;
}

/* The source of a merge: its bits (loaded here when it is not bs's own
 * in-memory bitmap: *tmp, to free) and the size it covers. */
static int merge_source(BlockDriverState *bs, const BdrvBitmapOp *op, Qcow2Bitmap **src,
                        Qcow2BitmapMem **tmp, uint64_t *size, Error **errp)
{
    BlockDriverState *sbs = op->src ? op->src : bs;
    Qcow2Bitmap *bm;

    *tmp = NULL;
    if (sbs->drv != bs->drv) {
        error_setg(errp, "Dirty bitmap '%s' not found", op->src_name);
        return -ENOENT;
    }
    BDRVQcow2State *ss = sbs->opaque;
    bm = bm_lookup(ss->bitmaps, op->src_name, errp);
    if (!bm) {
        return -ENOENT;
    }
    if (bm_usable(bm, errp) < 0) {
        return -EINVAL;
    }
    *size = (uint64_t)bdrv_get_total_bytes(sbs);
    *src = bm;
    if (!bm->mem) {
        int ret = data_load(sbs, bm, errp);
        if (ret < 0) {
            return ret;
        }
        *tmp = bm->mem;
        bm->mem = NULL;
    }
    return 0;
}

static int bm_merge(BlockDriverState *bs, Qcow2Bitmap *dst, const BdrvBitmapOp *op,
                    Error **errp)
{
    Qcow2Bitmap *src = NULL;
    Qcow2BitmapMem *tmp = NULL;
    uint64_t ssize = 0, dsize = (uint64_t)bdrv_get_total_bytes(bs);
    int ret = bm_usable(dst, errp);

    if (ret == 0) {
        ret = merge_source(bs, op, &src, &tmp, &ssize, errp);
    }
    if (ret < 0) {
        return ret;
    }
    if (ssize != dsize) {
        error_setg(errp, "Bitmaps are of different sizes (destination size is %" PRIu64
                   ", source size is %" PRIu64 ") and can't be merged", dsize, ssize);
        ret = -EINVAL;
    } else {
        Qcow2BitmapMem *sm = tmp ? tmp : src->mem, *dm = dst->mem;
        uint8_t sg = src->granularity_bits, dg = dst->granularity_bits;
        for (uint64_t i = 0; i < sm->nb_bits; i++) {
            if (!(i % 64) && !sm->words[i / 64]) {
                i += 63;
                continue;
            }
            if (bm_mem_get(sm, i)) {
                uint64_t start = i << sg, end = MIN(dsize, (i + 1) << sg);
                bm_mem_set(dm, start >> dg, (end - 1) >> dg);
            }
        }
    }
    free(tmp);
    return ret;
}

int qcow2_bitmap_op(BlockDriverState *bs, const BdrvBitmapOp *op, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Bitmap *bm;

    if (!s->bitmaps_writable) {
        error_setg(errp, "qcow2: %s: the image is not open read-write", qcow2_image_name(bs));
        return -EACCES;
    }
    int ret = 0;
    bm = op->type == BDRV_BITMAP_ADD ? NULL : bm_lookup(s->bitmaps, op->name, errp);
    if (op->type != BDRV_BITMAP_ADD && !bm) {
        return -ENOENT;
    }
    switch (op->type) {
    case BDRV_BITMAP_ADD:
        ret = bm_add(bs, op, errp);
        break;
    case BDRV_BITMAP_REMOVE:
        ret = bm_remove(bs, bm, errp);
        break;
    case BDRV_BITMAP_CLEAR:
        ret = bm_usable(bm, errp);
        if (ret == 0) {
            memset(bm->mem->words, 0, DIV_ROUND_UP(bm->mem->nb_bits, 64) * 8);
            bm_mem_free(bm->mem->older);     /* no writer holds them now */
            bm->mem->older = NULL;
        }
        break;
    case BDRV_BITMAP_ENABLE:
    case BDRV_BITMAP_DISABLE:
        ret = bm_usable(bm, errp);
        if (ret == 0) {
            bm->enabled = op->type == BDRV_BITMAP_ENABLE;
        }
        break;
    case BDRV_BITMAP_MERGE:
        ret = bm_merge(bs, bm, op, errp);
        break;
    default:
        ret = -EINVAL;
        break;
    }
    /* Always: an add or a remove may have moved the bitmaps in memory. */
    if (rebuild_rec(s->bitmaps) < 0) {
        if (ret == 0) {
            error_setg(errp, "out of memory");
        }
        /* Record nothing rather than into freed memory. */
        s->bitmaps->nb_rec = 0;
        return ret ? ret : -ENOMEM;
    }
    return ret;
}
