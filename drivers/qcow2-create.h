/*
 * qcow2-create.h - the in-memory image qcow2-create.c builds: QEMU's
 * allocator replayed (qcow2-create-layout.c) so that every structure lands
 * where qemu-img 7.2 puts it.  Only drivers/qcow2-create*.c include this.
 */
#ifndef UBLKD_DRIVERS_QCOW2_CREATE_H
#define UBLKD_DRIVERS_QCOW2_CREATE_H

#include "qcow2-int.h"

/* The image being built: what QEMU's BDRVQcow2State would hold. */
typedef struct Q2Sim {
    BdrvChild *file;
    uint32_t cb, order, rb_bits;
    uint64_t cs, rb_size;            /* refcounts per block */
    uint32_t l2_entry_size;
    uint64_t l2_size;                /* entries per L2 table */
    bool extl2, data_file;
    uint64_t *reftable;              /* host order */
    uint64_t reftable_size, reftable_offset;
    uint64_t *rb_offsets;            /* refcount blocks: offset -> buffer */
    uint8_t **rb_bufs;
    size_t nb_rb, rb_alloc;
    uint64_t *l1;
    uint64_t l1_size, l1_offset;
    uint8_t **l2;                    /* by L1 index; written out and freed when full */
    uint64_t free_cluster_index;
    uint64_t file_len;               /* what bdrv_getlength would say */
    uint64_t crypto_offset, crypto_len;  /* the LUKS area (encrypt.format=luks) */
} Q2Sim;

/* bdrv_getlength of the file grows with what QEMU would have written. */
void q2sim_note_write(Q2Sim *s, uint64_t off, uint64_t len);
/* A zeroed refcount block at offset (cached until written). */
uint8_t *q2sim_rb_new(Q2Sim *s, uint64_t offset);
/* QEMU's qcow2_alloc_clusters: first fit, refcounts updated; -errno. */
int64_t q2sim_alloc_clusters(Q2Sim *s, uint64_t size);
/* Write a host-order u64 table big-endian at offset (bytes >= n * 8). */
int q2sim_write_table(Q2Sim *s, uint64_t offset, const uint64_t *t, uint64_t n, uint64_t bytes);
uint64_t q2sim_size_to_l1(const Q2Sim *s, uint64_t size);
/* QEMU's qcow2_grow_l1_table(exact) from an empty L1. */
int q2sim_grow_l1(Q2Sim *s, uint64_t new_size);
/* preallocation=metadata (or falloc/full with a data file); *end is where
 * the data of the last cluster ends. */
int q2sim_preallocate_metadata(Q2Sim *s, uint64_t size, uint64_t *end);
/* preallocation=falloc/full without a data file. */
int q2sim_preallocate_data(Q2Sim *s, uint64_t size, PreallocMode mode, Error **errp);
void q2sim_free(Q2Sim *s);

#endif
