/*
 * ublk-abi.h - the kernel ublk driver's user ABI, as of Linux 7.3.
 *
 * The build machines ship <linux/ublk_cmd.h> from 6.1, which lacks most of
 * what a current server uses (ioctl-encoded opcodes, GET_FEATURES,
 * GET_DEV_INFO2, UNPRIVILEGED_DEV, USER_COPY, devt/zoned params, the user
 * copy offset encoding, and everything from 6.14 on: zero copy by buffer
 * registration, batch I/O, quiesce, shared-memory zero copy).  This header is
 * a self-contained statement of those ABI facts (numbers and layouts from
 * include/uapi/linux/ublk_cmd.h of 7.3), so the system header is never
 * needed; GET_FEATURES decides at run time which of them a kernel has.  It claims the system header's include
 * guard, so a stray #include <linux/ublk_cmd.h> afterwards is a no-op
 * instead of a redefinition error.  Values are ABI: never change them.
 */
#ifndef UBLKD_UBLK_ABI_H
#define UBLKD_UBLK_ABI_H

#ifdef USER_BLK_DRV_CMD_INC_H
#error "include ublk-abi.h instead of <linux/ublk_cmd.h>"
#endif
#define USER_BLK_DRV_CMD_INC_H 1

#include <linux/types.h>
#include <sys/ioctl.h>

/* ---- control commands (legacy plain numbers; 6.12 still accepts them
 * when built with CONFIG_BLKDEV_UBLK_LEGACY_OPCODES) ---- */
#define UBLK_CMD_GET_QUEUE_AFFINITY   0x01
#define UBLK_CMD_GET_DEV_INFO         0x02
#define UBLK_CMD_ADD_DEV              0x04
#define UBLK_CMD_DEL_DEV              0x05
#define UBLK_CMD_START_DEV            0x06
#define UBLK_CMD_STOP_DEV             0x07
#define UBLK_CMD_SET_PARAMS           0x08
#define UBLK_CMD_GET_PARAMS           0x09
#define UBLK_CMD_START_USER_RECOVERY  0x10
#define UBLK_CMD_END_USER_RECOVERY    0x11
#define UBLK_CMD_GET_DEV_INFO2        0x12
#define UBLK_CMD_GET_FEATURES         0x13   /* ioctl-encoded form only */
#define UBLK_CMD_DEL_DEV_ASYNC        0x14   /* ioctl-encoded form only */
/* The commands below exist in the ioctl-encoded form only. */
#define UBLK_CMD_UPDATE_SIZE          0x15   /* UPDATE_SIZE: data[0] = new size in sectors */
#define UBLK_CMD_QUIESCE_DEV          0x16   /* QUIESCE: data[0] = timeout in ms */
#define UBLK_CMD_TRY_STOP_DEV         0x17   /* SAFE_STOP_DEV: -EBUSY while the disk is open */
#define UBLK_CMD_REG_BUF              0x18   /* SHMEM_ZC: addr -> struct ublk_shmem_buf_reg */
#define UBLK_CMD_UNREG_BUF            0x19   /* SHMEM_ZC: data[0] = buffer index */

/* ---- shipped in sqe->cmd of a 128-byte SQE (32 bytes) ---- */
struct ublksrv_ctrl_cmd {
    __u32 dev_id;          /* (__u32)-1 on ADD_DEV: "any free id" */
    __u16 queue_id;        /* (__u16)-1 unless the command is per queue */
    __u16 len;             /* of the buffer at addr */
    __u64 addr;
    __u64 data[1];         /* inline argument (pid for START_DEV, ...) */
    /* Unprivileged devices and GET_DEV_INFO2: addr starts with the char
     * device path, dev_path_len bytes including the NUL, then the payload. */
    __u16 dev_path_len;
    __u16 pad;
    __u32 reserved;
};

/* ioctl-encoded opcodes (UBLK_F_CMD_IOCTL_ENCODE, 6.3+); note the mix of
 * _IOR and _IOWR is the kernel's. */
#define UBLK_U_CMD_GET_QUEUE_AFFINITY  _IOR('u', UBLK_CMD_GET_QUEUE_AFFINITY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_DEV_INFO        _IOR('u', UBLK_CMD_GET_DEV_INFO, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_ADD_DEV             _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_DEL_DEV             _IOWR('u', UBLK_CMD_DEL_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_START_DEV           _IOWR('u', UBLK_CMD_START_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_STOP_DEV            _IOWR('u', UBLK_CMD_STOP_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_SET_PARAMS          _IOWR('u', UBLK_CMD_SET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_PARAMS          _IOR('u', UBLK_CMD_GET_PARAMS, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_START_USER_RECOVERY _IOWR('u', UBLK_CMD_START_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_END_USER_RECOVERY   _IOWR('u', UBLK_CMD_END_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_DEV_INFO2       _IOR('u', UBLK_CMD_GET_DEV_INFO2, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_FEATURES        _IOR('u', UBLK_CMD_GET_FEATURES, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_DEL_DEV_ASYNC       _IOR('u', UBLK_CMD_DEL_DEV_ASYNC, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_UPDATE_SIZE         _IOWR('u', UBLK_CMD_UPDATE_SIZE, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_QUIESCE_DEV         _IOWR('u', UBLK_CMD_QUIESCE_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_TRY_STOP_DEV        _IOWR('u', UBLK_CMD_TRY_STOP_DEV, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_REG_BUF             _IOWR('u', UBLK_CMD_REG_BUF, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_UNREG_BUF           _IOWR('u', UBLK_CMD_UNREG_BUF, struct ublksrv_ctrl_cmd)

/* REG_BUF's argument (through addr, so that an unprivileged device's path
 * can go in front of it). */
struct ublk_shmem_buf_reg {
    __u64 addr;            /* the server's mapping of the shared memory */
    __u64 len;             /* page-aligned */
    __u32 flags;
    __u32 reserved;
};
#define UBLK_SHMEM_BUF_READ_ONLY  (1U << 0)   /* pinned without FOLL_WRITE */

#define UBLK_FEATURES_LEN 8   /* GET_FEATURES writes one __u64 */

/* ---- I/O commands on /dev/ublkcN (16 bytes, fit a 64-byte SQE) ---- */
#define UBLK_IO_FETCH_REQ             0x20
#define UBLK_IO_COMMIT_AND_FETCH_REQ  0x21
#define UBLK_IO_NEED_GET_DATA         0x22

struct ublksrv_io_cmd {
    __u16 q_id;
    __u16 tag;
    __s32 result;          /* COMMIT: bytes done or -errno */
    union {
        __u64 addr;        /* FETCH/COMMIT/NEED_GET_DATA: the tag's buffer (0 with USER_COPY) */
        __u64 zone_append_lba;
    };
};

#define UBLK_U_IO_FETCH_REQ            _IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ _IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_NEED_GET_DATA        _IOWR('u', UBLK_IO_NEED_GET_DATA, struct ublksrv_io_cmd)
/* ZERO_COPY: put a request's pages in (or take them out of) the issuing
 * ring's sparse buffer table at index addr. */
#define UBLK_U_IO_REGISTER_IO_BUF      _IOWR('u', 0x23, struct ublksrv_io_cmd)
#define UBLK_U_IO_UNREGISTER_IO_BUF    _IOWR('u', 0x24, struct ublksrv_io_cmd)

/* AUTO_BUF_REG: what FETCH and COMMIT_AND_FETCH carry in sqe->addr instead
 * of a buffer address: bits 0-15 index, 16-23 flags, the rest zero. */
struct ublk_auto_buf_reg {
    __u16 index;           /* in the issuing ring's sparse buffer table */
    __u8 flags;
    __u8 reserved0;
    __u32 reserved1;
};
/* On failure to register, deliver the request with UBLK_IO_F_NEED_REG_BUF
 * instead of failing it. */
#define UBLK_AUTO_BUF_REG_FALLBACK  (1 << 0)
#define UBLK_AUTO_BUF_REG_F_MASK    UBLK_AUTO_BUF_REG_FALLBACK

static inline __u64 ublk_auto_buf_reg_to_sqe_addr(const struct ublk_auto_buf_reg *r)
{
    return r->index | (__u64)r->flags << 16 | (__u64)r->reserved0 << 24 |
           (__u64)r->reserved1 << 32;
}

/* BATCH_IO: one uring_cmd prepares, commits or fetches many tags.  The
 * command's buffer holds nr_elem elements of elem_bytes each: a
 * struct ublk_elem_header, then a __u64 buffer address if HAS_BUF_ADDR, then
 * a __u64 zone LBA if HAS_ZONE_LBA.  FETCH_IO_CMDS fills a provided buffer
 * with __u16 tags.  The single-tag commands are refused on such devices. */
struct ublk_elem_header {
    __u16 tag;
    __u16 buf_index;       /* AUTO_BUF_REG only */
    __s32 result;          /* commit only */
};
struct ublk_batch_io {
    __u16 q_id;
#define UBLK_BATCH_F_HAS_ZONE_LBA           (1 << 0)
#define UBLK_BATCH_F_HAS_BUF_ADDR           (1 << 1)
#define UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK  (1 << 2)
    __u16 flags;
    __u16 nr_elem;
    __u8 elem_bytes;
    __u8 reserved;
    __u64 reserved2;
};
#define UBLK_U_IO_PREP_IO_CMDS         _IOWR('u', 0x25, struct ublk_batch_io)
#define UBLK_U_IO_COMMIT_IO_CMDS       _IOWR('u', 0x26, struct ublk_batch_io)
#define UBLK_U_IO_FETCH_IO_CMDS        _IOWR('u', 0x27, struct ublk_batch_io)

/* CQE results of the I/O commands; only ABORT means "do not re-fetch". */
#define UBLK_IO_RES_OK              0
#define UBLK_IO_RES_NEED_GET_DATA   1
#define UBLK_IO_RES_ABORT           (-19)   /* -ENODEV */

/* ---- mmap and user-copy offsets on /dev/ublkcN ---- */
#define UBLKSRV_CMD_BUF_OFFSET  0
#define UBLKSRV_IO_BUF_OFFSET   0x80000000ULL
#define UBLK_MAX_QUEUE_DEPTH    4096

/* USER_COPY: pread/pwrite position = UBLKSRV_IO_BUF_OFFSET +
 * (q_id << UBLK_QID_OFF | tag << UBLK_TAG_OFF | byte offset in the request). */
#define UBLK_IO_BUF_OFF        0
#define UBLK_IO_BUF_BITS       25
#define UBLK_IO_BUF_BITS_MASK  ((1ULL << UBLK_IO_BUF_BITS) - 1)
#define UBLK_TAG_OFF           UBLK_IO_BUF_BITS
#define UBLK_TAG_BITS          16
#define UBLK_TAG_BITS_MASK     ((1ULL << UBLK_TAG_BITS) - 1)
#define UBLK_QID_OFF           (UBLK_TAG_OFF + UBLK_TAG_BITS)
#define UBLK_QID_BITS          12
#define UBLK_QID_BITS_MASK     ((1ULL << UBLK_QID_BITS) - 1)
#define UBLK_MAX_NR_QUEUES     (1U << UBLK_QID_BITS)
#define UBLKSRV_IO_BUF_TOTAL_BITS (UBLK_QID_OFF + UBLK_QID_BITS)
#define UBLKSRV_IO_BUF_TOTAL_SIZE (1ULL << UBLKSRV_IO_BUF_TOTAL_BITS)
/* INTEGRITY: this bit in the user-copy offset selects the request's
 * integrity buffer instead of its data. */
#define UBLK_INTEGRITY_FLAG_OFF   62
#define UBLKSRV_IO_INTEGRITY_FLAG (1ULL << UBLK_INTEGRITY_FLAG_OFF)

/* ---- feature flags (ublksrv_ctrl_dev_info.flags; GET_FEATURES) ---- */
#define UBLK_F_SUPPORT_ZERO_COPY        (1ULL << 0)
#define UBLK_F_URING_CMD_COMP_IN_TASK   (1ULL << 1)
#define UBLK_F_NEED_GET_DATA            (1ULL << 2)
#define UBLK_F_USER_RECOVERY            (1ULL << 3)
#define UBLK_F_USER_RECOVERY_REISSUE    (1ULL << 4)
#define UBLK_F_UNPRIVILEGED_DEV         (1ULL << 5)
#define UBLK_F_CMD_IOCTL_ENCODE         (1ULL << 6)
#define UBLK_F_USER_COPY                (1ULL << 7)
#define UBLK_F_ZONED                    (1ULL << 8)
#define UBLK_F_USER_RECOVERY_FAIL_IO    (1ULL << 9)   /* 6.13: Debian 6.12 lacks it */
#define UBLK_F_UPDATE_SIZE              (1ULL << 10)  /* 6.14 */
#define UBLK_F_AUTO_BUF_REG             (1ULL << 11)
#define UBLK_F_QUIESCE                  (1ULL << 12)
#define UBLK_F_PER_IO_DAEMON            (1ULL << 13)
#define UBLK_F_BUF_REG_OFF_DAEMON       (1ULL << 14)  /* (un)register from any task */
#define UBLK_F_BATCH_IO                 (1ULL << 15)
#define UBLK_F_INTEGRITY                (1ULL << 16)  /* needs USER_COPY */
#define UBLK_F_SAFE_STOP_DEV            (1ULL << 17)  /* TRY_STOP_DEV */
#define UBLK_F_NO_AUTO_PART_SCAN        (1ULL << 18)
#define UBLK_F_SHMEM_ZC                 (1ULL << 19)  /* REG_BUF / UNREG_BUF */
#define UBLK_F_IO_DESC_SIZE             (1ULL << 20)  /* dev_info.io_desc_size */
/* The highest feature bit this header knows. */
#define UBLK_F_LAST_BIT                 20

/* ---- device states (ublksrv_ctrl_dev_info.state) ---- */
#define UBLK_S_DEV_DEAD      0
#define UBLK_S_DEV_LIVE      1
#define UBLK_S_DEV_QUIESCED  2
#define UBLK_S_DEV_FAIL_IO   3

struct ublksrv_ctrl_dev_info {
    __u16 nr_hw_queues;
    __u16 queue_depth;
    __u16 state;
    __u16 io_desc_size;    /* IO_DESC_SIZE: bytes per descriptor (0 = 24) */
    __u32 max_io_buf_bytes;
    __u32 dev_id;
    __s32 ublksrv_pid;
    __u32 pad1;
    __u64 flags;
    __u64 ublksrv_flags;   /* server's own, opaque to the driver */
    __u32 owner_uid;       /* set by the kernel */
    __u32 owner_gid;
    __u64 reserved1;
    __u64 reserved2;
};

/* ---- the per-tag descriptor, mmap'ed read-only ---- */
#define UBLK_IO_OP_READ           0
#define UBLK_IO_OP_WRITE          1
#define UBLK_IO_OP_FLUSH          2
#define UBLK_IO_OP_DISCARD        3
#define UBLK_IO_OP_WRITE_SAME     4
#define UBLK_IO_OP_WRITE_ZEROES   5
#define UBLK_IO_OP_ZONE_OPEN      10
#define UBLK_IO_OP_ZONE_CLOSE     11
#define UBLK_IO_OP_ZONE_FINISH    12
#define UBLK_IO_OP_ZONE_APPEND    13
#define UBLK_IO_OP_ZONE_RESET_ALL 14
#define UBLK_IO_OP_ZONE_RESET     15
#define UBLK_IO_OP_REPORT_ZONES   18

#define UBLK_IO_F_FAILFAST_DEV        (1U << 8)
#define UBLK_IO_F_FAILFAST_TRANSPORT  (1U << 9)
#define UBLK_IO_F_FAILFAST_DRIVER     (1U << 10)
#define UBLK_IO_F_META                (1U << 11)
#define UBLK_IO_F_FUA                 (1U << 13)
#define UBLK_IO_F_NOUNMAP             (1U << 15)
#define UBLK_IO_F_SWAP                (1U << 16)
#define UBLK_IO_F_NEED_REG_BUF        (1U << 17)  /* AUTO_BUF_REG fallback: register by hand */
#define UBLK_IO_F_INTEGRITY           (1U << 18)
#define UBLK_IO_F_SHMEM_ZC            (1U << 19)  /* addr: index << 32 | offset */

/* SHMEM_ZC: a descriptor's addr names a registered shared buffer. */
#define UBLK_SHMEM_ZC_OFF_MASK  0xffffffffULL
#define UBLK_SHMEM_ZC_IDX_OFF   32
#define UBLK_SHMEM_ZC_IDX_MASK  0xffffULL

struct ublksrv_io_desc {
    __u32 op_flags;        /* op: bits 0-7, flags: bits 8-31 */
    union {
        __u32 nr_sectors;
        __u32 nr_zones;
    };
    __u64 start_sector;
    __u64 addr;            /* the buffer the server gave on FETCH */
};

static inline __u8 ublksrv_get_op(const struct ublksrv_io_desc *iod)
{
    return iod->op_flags & 0xff;
}

static inline __u32 ublksrv_get_flags(const struct ublksrv_io_desc *iod)
{
    return iod->op_flags >> 8;
}

/* ---- parameters (SET_PARAMS / GET_PARAMS) ---- */
struct ublk_param_basic {
#define UBLK_ATTR_READ_ONLY       (1 << 0)
#define UBLK_ATTR_ROTATIONAL      (1 << 1)
#define UBLK_ATTR_VOLATILE_CACHE  (1 << 2)
#define UBLK_ATTR_FUA             (1 << 3)
    __u32 attrs;
    __u8 logical_bs_shift;
    __u8 physical_bs_shift;
    __u8 io_opt_shift;
    __u8 io_min_shift;
    __u32 max_sectors;
    __u32 chunk_sectors;
    __u64 dev_sectors;
    __u64 virt_boundary_mask;
};

struct ublk_param_discard {
    __u32 discard_alignment;
    __u32 discard_granularity;
    __u32 max_discard_sectors;
    __u32 max_write_zeroes_sectors;
    __u16 max_discard_segments;
    __u16 reserved0;
};

/* Read-only; disk numbers valid once started. */
struct ublk_param_devt {
    __u32 char_major;
    __u32 char_minor;
    __u32 disk_major;
    __u32 disk_minor;
};

struct ublk_param_zoned {
    __u32 max_open_zones;
    __u32 max_active_zones;
    __u32 max_zone_append_sectors;
    __u8 reserved[20];
};

struct ublk_param_dma_align {
    __u32 alignment;
    __u8 pad[4];
};

#define UBLK_MIN_SEGMENT_SIZE 4096
struct ublk_param_segment {
    __u64 seg_boundary_mask;   /* + 1 a power of two, >= 4096 */
    __u32 max_segment_size;    /* >= 4096 */
    __u16 max_segments;
    __u8 pad[2];
};

struct ublk_param_integrity {
    __u32 flags;               /* LBMD_PI_CAP_* */
    __u16 max_integrity_segments;
    __u8 interval_exp;
    __u8 metadata_size;
    __u8 pi_offset;
    __u8 csum_type;
    __u8 tag_size;
    __u8 pad[5];
};

/* Older kernels take the prefix they know (they clamp len to their own
 * size), so the whole 7.3 layout is safe to send everywhere. */
struct ublk_params {
    __u32 len;             /* bytes of this struct the caller knows */
#define UBLK_PARAM_TYPE_BASIC      (1 << 0)
#define UBLK_PARAM_TYPE_DISCARD    (1 << 1)
#define UBLK_PARAM_TYPE_DEVT       (1 << 2)
#define UBLK_PARAM_TYPE_ZONED      (1 << 3)
#define UBLK_PARAM_TYPE_DMA_ALIGN  (1 << 4)
#define UBLK_PARAM_TYPE_SEGMENT    (1 << 5)
#define UBLK_PARAM_TYPE_INTEGRITY  (1 << 6)   /* needs UBLK_F_INTEGRITY */
    __u32 types;
    struct ublk_param_basic basic;
    struct ublk_param_discard discard;
    struct ublk_param_devt devt;
    struct ublk_param_zoned zoned;
    struct ublk_param_dma_align dma;
    struct ublk_param_segment seg;
    struct ublk_param_integrity integrity;
};

_Static_assert(sizeof(struct ublksrv_ctrl_cmd) == 32, "ublksrv_ctrl_cmd is 32 bytes");
_Static_assert(sizeof(struct ublksrv_io_cmd) == 16, "ublksrv_io_cmd is 16 bytes");
_Static_assert(sizeof(struct ublksrv_io_desc) == 24, "ublksrv_io_desc is 24 bytes");
_Static_assert(sizeof(struct ublksrv_ctrl_dev_info) == 64, "ublksrv_ctrl_dev_info is 64 bytes");
_Static_assert(sizeof(struct ublk_param_basic) == 32, "ublk_param_basic is 32 bytes");
_Static_assert(sizeof(struct ublk_auto_buf_reg) == 8, "ublk_auto_buf_reg is 8 bytes");
_Static_assert(sizeof(struct ublk_elem_header) == 8, "ublk_elem_header is 8 bytes");
_Static_assert(sizeof(struct ublk_batch_io) == 16, "ublk_batch_io is 16 bytes");
_Static_assert(sizeof(struct ublk_shmem_buf_reg) == 24, "ublk_shmem_buf_reg is 24 bytes");
_Static_assert(sizeof(struct ublk_param_segment) == 16, "ublk_param_segment is 16 bytes");
_Static_assert(sizeof(struct ublk_param_integrity) == 16, "ublk_param_integrity is 16 bytes");
_Static_assert(__builtin_offsetof(struct ublk_params, dma) == 108, "ublk_params: dma after zoned");
_Static_assert(__builtin_offsetof(struct ublk_params, seg) == 120, "ublk_params: seg 8-aligned");
_Static_assert(sizeof(struct ublk_params) == 152, "ublk_params layout");

#endif
