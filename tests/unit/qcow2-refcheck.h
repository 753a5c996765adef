/*
 * qcow2-refcheck.h - an independent consistency check of a qcow2 image held
 * in memory, for the crash and differential tests (test-qcow2-crash.c,
 * test-qcow2-diff.c).  It does not use the driver: it walks the header, the
 * L1 and refcount tables, every L2 table and refcount block from the bytes,
 * counts the references to every host cluster and compares them with the
 * stored refcounts, as qemu-img check does:
 *
 *   errors    what no repair short of a rebuild fixes: a cluster used twice
 *             (other than compressed clusters sharing one), metadata past
 *             the end of the file or unaligned, the corrupt bit;
 *   low       clusters with a refcount below their references (corruption,
 *             unless lazy refcounts left the dirty bit set: then repairable);
 *   copied    OFLAG_COPIED set where the refcount is not 1 or the reverse;
 *   leaks     clusters with a refcount but no reference (harmless).
 *
 * Header-only so only the suites that use it link it.
 */
#ifndef UBLKD_TESTS_QCOW2_REFCHECK_H
#define UBLKD_TESTS_QCOW2_REFCHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../drivers/qcow2-int.h"

typedef struct Q2Check {
    int errors, low, copied, leaks;
    bool dirty, corrupt;
    char first[200];            /* the first problem found, for messages */
} Q2Check;

typedef struct Q2Walk {
    const uint8_t *img;
    size_t len;
    uint32_t cb, order;
    uint64_t cs, nclusters;     /* clusters the refs array covers */
    uint32_t *refs;
    uint8_t *exclusive;         /* referenced by something other than a compressed cluster */
    uint64_t reft_off;
    uint32_t reft_entries;
    Q2Check *res;
} Q2Walk;

static inline void q2c_note(Q2Check *r, int *counter, const char *fmt, unsigned long long a,
                            unsigned long long b)
{
    if (r->errors + r->low + r->copied == 0 && counter != &r->leaks) {
        snprintf(r->first, sizeof(r->first), fmt, a, b);
    }
    (*counter)++;
}

static inline uint64_t q2c_be64(const Q2Walk *w, uint64_t off)
{
    return off + 8 <= w->len ? qcow2_ld64(w->img, off) : 0;
}

/* The stored refcount of cluster ci (0 where no refcount block covers it). */
static inline uint64_t q2c_refcount(const Q2Walk *w, uint64_t ci)
{
    uint32_t rb_bits = w->cb + 3 - w->order;
    uint64_t ti = ci >> rb_bits;
    if (ti >= w->reft_entries) {
        return 0;
    }
    uint64_t rb = q2c_be64(w, w->reft_off + ti * 8) & ~511ULL;
    if (!rb || rb + w->cs > w->len) {
        return 0;
    }
    return qcow2_rc_get(w->img + rb, ci & ((1ULL << rb_bits) - 1), w->order);
}

/* One more reference to [off, off + len); metadata must lie in the file. */
static inline void q2c_ref(Q2Walk *w, uint64_t off, uint64_t len, bool compressed,
                           bool metadata, const char *what)
{
    if (!compressed && (off & (w->cs - 1))) {
        q2c_note(w->res, &w->res->errors, "unaligned %s at 0x%llx", off, 0);
        return;
    }
    if (metadata && off + len > w->len) {
        q2c_note(w->res, &w->res->errors, "metadata past the end of the file at 0x%llx (%llu)",
                 off, len);
        return;
    }
    (void)what;
    for (uint64_t ci = off / w->cs; ci <= (off + len - 1) / w->cs; ci++) {
        if (ci >= w->nclusters) {
            q2c_note(w->res, &w->res->errors, "cluster 0x%llx out of range", ci, 0);
            return;
        }
        if (w->refs[ci] && (!compressed || w->exclusive[ci])) {
            q2c_note(w->res, &w->res->errors, "cluster %llu referenced twice (0x%llx)", ci,
                     ci * w->cs);
        }
        w->refs[ci]++;
        if (!compressed) {
            w->exclusive[ci] = 1;
        }
    }
}

static inline void q2c_copied(Q2Walk *w, uint64_t e, uint64_t host, const char *what)
{
    (void)what;
    uint64_t rc = q2c_refcount(w, host / w->cs);
    bool copied = e & QCOW2_OFLAG_COPIED;
    if (copied != (rc == 1)) {
        q2c_note(w->res, &w->res->copied, "OFLAG_COPIED mismatch at 0x%llx (refcount %llu)",
                 host, rc);
    }
}

/* Check the image in img[0, len). */
static inline Q2Check q2_refcheck(const uint8_t *img, size_t len)
{
    Q2Check r = { 0 };
    Q2Walk w = { .img = img, .len = len, .res = &r };

    if (len < 112 || qcow2_ld32(img, QH_MAGIC) != QCOW2_MAGIC) {
        q2c_note(&r, &r.errors, "no qcow2 header (%llu bytes)", len, 0);
        return r;
    }
    w.cb = qcow2_ld32(img, QH_CLUSTER_BITS);
    w.cs = 1ULL << w.cb;
    w.order = qcow2_ld32(img, QH_VERSION) >= 3 ? qcow2_ld32(img, QH_REFCOUNT_ORDER) : 4;
    uint64_t incompat = qcow2_ld32(img, QH_VERSION) >= 3 ? qcow2_ld64(img, QH_INCOMPAT) : 0;
    r.dirty = incompat & QCOW2_INCOMPAT_DIRTY;
    r.corrupt = incompat & QCOW2_INCOMPAT_CORRUPT;
    if (r.corrupt) {
        q2c_note(&r, &r.errors, "the corrupt bit is set (incompat 0x%llx)", incompat, 0);
    }
    bool extl2 = incompat & QCOW2_INCOMPAT_EXTL2;
    /* data clusters live in the external data file: nothing counts them */
    bool datafile = incompat & QCOW2_INCOMPAT_DATA_FILE;
    uint32_t esize = extl2 ? 16 : 8;
    uint32_t l1_size = qcow2_ld32(img, QH_L1_SIZE);
    uint64_t l1_off = qcow2_ld64(img, QH_L1_OFFSET);
    w.reft_off = qcow2_ld64(img, QH_REFTABLE_OFFSET);
    w.reft_entries = qcow2_ld32(img, QH_REFTABLE_CLUSTERS) * (uint32_t)(w.cs / 8);
    uint32_t csize_shift = 62 - (w.cb - 8);
    uint64_t csize_mask = (1ULL << (w.cb - 8)) - 1;
    uint64_t coff_mask = (1ULL << csize_shift) - 1;

    w.nclusters = (len + w.cs - 1) / w.cs + 65536;
    w.refs = calloc(w.nclusters, sizeof(*w.refs));
    w.exclusive = calloc(w.nclusters, 1);
    if (!w.refs || !w.exclusive) {
        abort();
    }
    q2c_ref(&w, 0, w.cs, false, true, "header");
    q2c_ref(&w, l1_off, l1_size ? (uint64_t)l1_size * 8 : 1, false, true, "L1");
    q2c_ref(&w, w.reft_off, (uint64_t)w.reft_entries * 8, false, true, "refcount table");
    for (uint32_t i = 0; i < w.reft_entries; i++) {
        uint64_t rb = q2c_be64(&w, w.reft_off + (uint64_t)i * 8) & ~511ULL;
        if (rb) {
            q2c_ref(&w, rb, w.cs, false, true, "refcount block");
        }
    }
    for (uint32_t i = 0; i < l1_size && r.errors == 0; i++) {
        uint64_t l1e = q2c_be64(&w, l1_off + (uint64_t)i * 8);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        q2c_ref(&w, l2, w.cs, false, true, "L2 table");
        if (l2 + w.cs > len) {
            continue;
        }
        for (uint64_t j = 0; j < w.cs / esize; j++) {
            uint64_t e = qcow2_ld64(img, l2 + j * esize);
            if (e & QCOW2_OFLAG_COMPRESSED) {
                uint64_t coff = e & coff_mask;
                uint64_t nsec = ((e >> csize_shift) & csize_mask) + 1;
                q2c_ref(&w, coff & ~511ULL, nsec * 512,
                        true, false, "compressed cluster");
                continue;
            }
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (host && !datafile) {
                q2c_ref(&w, host, w.cs, false, false, "data cluster");
            }
        }
    }
    /* Refcounts against references, then the COPIED flags. */
    uint64_t file_clusters = (len + w.cs - 1) / w.cs;
    for (uint64_t ci = 0; ci < w.nclusters; ci++) {
        uint64_t rc = ci < file_clusters || w.refs[ci] ? q2c_refcount(&w, ci) : 0;
        if (rc < w.refs[ci]) {
            q2c_note(&r, &r.low, "cluster %llu: refcount %llu below its references", ci, rc);
        } else if (rc > w.refs[ci]) {
            r.leaks++;
        }
    }
    for (uint32_t i = 0; i < l1_size && r.errors == 0; i++) {
        uint64_t l1e = q2c_be64(&w, l1_off + (uint64_t)i * 8);
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2 || l2 + w.cs > len) {
            continue;
        }
        q2c_copied(&w, l1e, l2, "L2 table");
        for (uint64_t j = 0; j < w.cs / esize; j++) {
            uint64_t e = qcow2_ld64(img, l2 + j * esize);
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (!(e & QCOW2_OFLAG_COMPRESSED) && host && !datafile) {
                q2c_copied(&w, e, host, "data cluster");
            }
        }
    }
    free(w.refs);
    free(w.exclusive);
    return r;
}

#endif
