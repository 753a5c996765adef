/*
 * ublk.h - the ublk server: control plane, queue threads, device lifecycle.
 *
 * Layers, bottom up (one file each in ublk/):
 *   ctrl.c    commands on /dev/ublk-control (ADD/START/STOP/DEL, params,
 *             info, features, recovery), ioctl-encoded when GET_FEATURES
 *             says the kernel takes that, else legacy numbers,
 *             dev-path prefixing for unprivileged devices.
 *   params.c  derive struct ublk_params from the root node's limits, the
 *             image size, the cache mode and the user's overrides.
 *   config.c  the device configuration (parsed `add` arguments) and the
 *             per-device state file (JSON) that `list` and `recover` read.
 *   queue.c   one thread per hardware queue, each on its own AioContext:
 *             a pre-allocated coroutine and buffer per tag turns ublk I/O
 *             commands into blk_co_* calls on the BlockBackend.
 *   ctlsock.c the daemon's control socket (RUNDIR/ID.sock): versioned JSON
 *             requests from `ublkd` verbs that need the daemon (resize),
 *             the peer's credentials checked; the client side too.
 *   server.c  the daemon: open the graph, add/recover the device, start the
 *             queues, publish state and counters, serve control requests,
 *             stop cleanly on SIGTERM.
 * The `ublkd add|del|list|recover|resize|features` verbs live in tools/dev*.c.
 */
#ifndef UBLKD_UBLK_H
#define UBLKD_UBLK_H

#include <sched.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>
#include "block-backend.h"
#include "error.h"
#include "ublk-abi.h"

/* ---------------- control plane (ublk/ctrl.c) ---------------- */

#define UBLK_CONTROL_PATH "/dev/ublk-control"

typedef struct UblkCtrl UblkCtrl;

/* Open /dev/ublk-control on its own SQE128 ring.  Errors say why (missing
 * module, permissions, no SQE128 support). */
UblkCtrl *ublk_ctrl_open(Error **errp);
void ublk_ctrl_close(UblkCtrl *c);
/* True if commands carry the char device path (caller lacks CAP_SYS_ADMIN,
 * so its devices are UBLK_F_UNPRIVILEGED_DEV). */
bool ublk_ctrl_unprivileged(const UblkCtrl *c);

/* All return 0 or -errno (the kernel's answer). */
/* Features the driver supports, asked once per handle (every other
 * command asks first if nobody has, since the answer picks its opcode).
 * Kernels before 6.5 have no GET_FEATURES: the 6.1 set is assumed and
 * *probed is false then. */
int ublk_ctrl_get_features(UblkCtrl *c, uint64_t *features, bool *probed);
/* info->dev_id = (__u32)-1 lets the kernel choose.  The kernel's view
 * (final id, capped queue count, owner) is written back into *info. */
int ublk_ctrl_add_dev(UblkCtrl *c, struct ublksrv_ctrl_dev_info *info);
int ublk_ctrl_del_dev(UblkCtrl *c, uint32_t dev_id);
int ublk_ctrl_start_dev(UblkCtrl *c, uint32_t dev_id, pid_t pid);
int ublk_ctrl_stop_dev(UblkCtrl *c, uint32_t dev_id);
/* SAFE_STOP_DEV: STOP_DEV unless the block device is open (-EBUSY then). */
int ublk_ctrl_try_stop_dev(UblkCtrl *c, uint32_t dev_id);
int ublk_ctrl_set_params(UblkCtrl *c, uint32_t dev_id, struct ublk_params *p);
int ublk_ctrl_get_params(UblkCtrl *c, uint32_t dev_id, struct ublk_params *p);
/* GET_DEV_INFO2, falling back to GET_DEV_INFO on kernels without it. */
int ublk_ctrl_get_info(UblkCtrl *c, uint32_t dev_id, struct ublksrv_ctrl_dev_info *info);
int ublk_ctrl_get_queue_affinity(UblkCtrl *c, uint32_t dev_id, unsigned q, cpu_set_t *set);
int ublk_ctrl_start_recovery(UblkCtrl *c, uint32_t dev_id);
/* UPDATE_SIZE (UBLK_F_UPDATE_SIZE, 6.14+): the disk's capacity becomes
 * sectors (512-byte).  The kernel checks nothing but that the disk exists
 * (-ENODEV before START_DEV and after STOP_DEV, from 7.0 on); the caller
 * checks the size.  Older kernels: -EOPNOTSUPP. */
int ublk_ctrl_update_size(UblkCtrl *c, uint32_t dev_id, uint64_t sectors);
/* QUIESCE_DEV (UBLK_F_QUIESCE, given at ADD_DEV with USER_RECOVERY): the
 * kernel stops dispatching, waits up to timeout_ms (0: for ever) for each
 * queue to have an idle tag (-EBUSY after), then aborts the daemon's
 * pending FETCHes; the device turns QUIESCED when the daemon closes its
 * char device.  -EOPNOTSUPP when the device lacks the flag. */
int ublk_ctrl_quiesce(UblkCtrl *c, uint32_t dev_id, uint64_t timeout_ms);
int ublk_ctrl_end_recovery(UblkCtrl *c, uint32_t dev_id, pid_t pid);

/* The kernel-internal ENOTSUPP: ublk_drv's answer to an opcode it does not know. */
#define UBLK_ENOTSUPP 524
/* What GET_FEATURES' result means (pure, unit-tested): 1 with *features =
 * reply when the kernel answered; 0 with the assumed 6.1 set when the
 * answer says "no such command" (-ENODEV, -ENOTSUPP, -EOPNOTSUPP, -EINVAL,
 * -EPERM from kernels < 6.5); otherwise the error. */
int ublk_features_from_reply(int ret, uint64_t reply, uint64_t *features);
/* Opcode for command nr: ioctl-encoded if features has
 * UBLK_F_CMD_IOCTL_ENCODE (GET_FEATURES always), else the legacy number;
 * 0 if there is none. */
unsigned ublk_ctrl_opcode(unsigned nr, uint64_t features);
/* Tests: a handle whose commands go to fn (returning the kernel's result)
 * instead of /dev/ublk-control. */
typedef int (*UblkCtrlSubmitFn)(void *opaque, unsigned op, const struct ublksrv_ctrl_cmd *cmd);
UblkCtrl *ublk_ctrl_new_fake(UblkCtrlSubmitFn fn, void *opaque, bool unprivileged);

/* Names for `features` and `list`: "USER_COPY", ... NULL for unknown bits. */
const char *ublk_feature_name(unsigned bit);
/* Why ublkd does not use a feature bit the kernel may offer, or NULL. */
const char *ublk_feature_unsupported(unsigned bit);
/* "LIVE", "QUIESCED", "DEAD", "FAIL_IO", "?" */
const char *ublk_state_name(unsigned state);
/* Comma-separated names of the set flags into buf (unknown bits as hex). */
void ublk_flags_to_string(uint64_t flags, char *buf, size_t len);

static inline void ublk_cdev_path(uint32_t dev_id, char *buf, size_t len)
{
    snprintf(buf, len, "/dev/ublkc%u", dev_id);
}
static inline void ublk_bdev_path(uint32_t dev_id, char *buf, size_t len)
{
    snprintf(buf, len, "/dev/ublkb%u", dev_id);
}

/* ---------------- ABI helpers (pure, unit-tested) ---------------- */

/* mmap offset of queue q's descriptor array: the kernel strides queues by
 * the size a *maximum-depth* queue would need, not by the actual depth. */
static inline uint64_t ublk_queue_desc_offset(unsigned q)
{
    uint64_t max_sz = (UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublksrv_io_desc) + 4095) & ~4095ULL;
    return UBLKSRV_CMD_BUF_OFFSET + (uint64_t)q * max_sz;
}
/* Bytes to mmap for a queue of the given depth (page rounded). */
static inline size_t ublk_queue_desc_size(unsigned depth, size_t page)
{
    return (depth * sizeof(struct ublksrv_io_desc) + page - 1) / page * page;
}
/* USER_COPY: pread/pwrite position on /dev/ublkcN for byte `off` of (q, tag). */
static inline uint64_t ublk_user_copy_pos(unsigned q, unsigned tag, uint32_t off)
{
    return UBLKSRV_IO_BUF_OFFSET + ((uint64_t)q << UBLK_QID_OFF) +
           ((uint64_t)tag << UBLK_TAG_OFF) + off;
}

/* ---------------- device configuration (ublk/config.c) ---------------- */

typedef enum {
    UBLK_RECOVERY_NONE,      /* daemon death kills the device */
    UBLK_RECOVERY_FAIL,      /* USER_RECOVERY: in-flight I/O fails, new I/O waits */
    UBLK_RECOVERY_REISSUE,   /* USER_RECOVERY_REISSUE: in-flight I/O is replayed */
    UBLK_RECOVERY_FAIL_IO,   /* USER_RECOVERY_FAIL_IO: all I/O fails until recovered */
} UblkRecoveryMode;
typedef enum { UBLK_AFFINITY_NONE, UBLK_AFFINITY_QUEUE } UblkAffinity;
/* --zero-copy: AUTO picks AUTO_BUF_REG, else SUPPORT_ZERO_COPY, else copies;
 * ON is the same but fails where the kernel cannot; REGISTER is ON with
 * REGISTER_IO_BUF/UNREGISTER_IO_BUF per request even where AUTO_BUF_REG
 * exists (the 6.15 path, testable on newer kernels). */
typedef enum { UBLK_ZC_AUTO, UBLK_ZC_ON, UBLK_ZC_OFF, UBLK_ZC_REGISTER } UblkZeroCopy;
/* --batch: UBLK_F_BATCH_IO (Linux 7.3).  AUTO asks for it where the kernel
 * has it and nothing excludes it (per-I/O threads, NEED_GET_DATA); ON fails
 * there instead.  The default is UBLK_BATCH_DEFAULT (docs/PERFORMANCE.md,
 * "Batched commands", has the measurement that chose it). */
typedef enum { UBLK_BATCH_OFF, UBLK_BATCH_AUTO, UBLK_BATCH_ON } UblkBatch;
#define UBLK_BATCH_DEFAULT UBLK_BATCH_OFF

#define UBLK_DEFAULT_QUEUES  1
#define UBLK_DEFAULT_DEPTH   128
#define UBLK_DEFAULT_MAX_IO  (512 * 1024)
#define UBLK_MAX_IO_LIMIT    (1U << UBLK_IO_BUF_BITS)   /* 32 MiB, the ABI's ceiling */

typedef struct UblkDevConfig {
    int dev_id;                /* -1: the kernel picks */
    char *type;                /* "raw", "null", "vdi", ... (NULL with blockdev) */
    char **files;              /* images, nfiles of them */
    int nfiles;
    char *blockdev;            /* --blockdev 'driver=...' or NULL */
    char *extra_opts;          /* -o k=v,... merged into the root's options */
    uint64_t size;             /* --size: null device size, 0 = not given */
    char *cache;               /* --cache mode, default "none" */
    char *discard;             /* --discard=unmap|ignore, default "unmap" */
    unsigned nr_queues, depth;
    uint32_t max_io_size;
    uint32_t logical_bs, physical_bs, io_opt;          /* 0 = derive */
    uint32_t discard_granularity;                      /* 0 = derive */
    uint64_t max_discard;                              /* bytes, 0 = derive */
    bool read_only, rotational, no_discard;
    bool user_copy, need_get_data;
    bool no_part_scan;         /* --no-partition-scan: UBLK_F_NO_AUTO_PART_SCAN */
    bool foreground;
    UblkRecoveryMode recovery;
    bool recovery_given;       /* --recovery/--reissue/-r: the kernel must honour it */
    UblkAffinity affinity;
    UblkZeroCopy zero_copy;
    unsigned per_io_threads;   /* --per-io-threads: 0 = one thread per queue */
    UblkBatch batch;           /* --batch */
    char *io_scheduler;        /* --io-scheduler: NULL = "none"; "kernel" keeps the kernel's */
    char *log_file;
    char *key_file;            /* --key-file: passphrase of an encrypted image (its path
                                * is recorded, never the key) */
    char **objects;            /* --object definitions, as given (dir=/file= made absolute):
                                * secret (file= only: the state file holds them) and
                                * tls-creds-psk|x509; registered where the graph is opened */
    int nobjects;
} UblkDevConfig;

void ublk_dev_config_init(UblkDevConfig *c);
void ublk_dev_config_free(UblkDevConfig *c);
/* Most --per-io-threads: more would only add rings that sit idle. */
#define UBLK_MAX_PER_IO_THREADS 256

/*
 * --per-io-threads (UBLK_F_PER_IO_DAEMON): every (queue, tag) pair of the
 * device, queue first, is dealt out round robin, so thread idx of n serves
 * pairs idx, idx + n, ... and every queue is spread over as many threads as
 * it has tags for (pure, unit-tested).  How many pairs thread idx serves:
 */
static inline unsigned ublk_per_io_thread_ntags(unsigned nr_queues, unsigned depth,
                                                unsigned nthreads, unsigned idx)
{
    unsigned total = nr_queues * depth;
    return idx < total ? (total - idx + nthreads - 1) / nthreads : 0;
}
/* And its k-th pair (k < ublk_per_io_thread_ntags). */
static inline void ublk_per_io_thread_pair(unsigned depth, unsigned nthreads, unsigned idx,
                                           unsigned k, unsigned *q, unsigned *tag)
{
    unsigned i = idx + k * nthreads;
    *q = i / depth;
    *tag = i % depth;
}

/* Parse `add` arguments (argv[0] is the verb).  Returns 0, 1 if --help was
 * printed, -1 with errp set on bad arguments. */
int ublk_dev_config_parse(UblkDevConfig *c, int argc, char **argv, Error **errp);
void ublk_dev_config_usage(FILE *f);
/* The error for getopt_long's ':' (missing value; the optstring must start
 * with ':') or '?' (unknown option, or a value given to one that takes
 * none), naming the option as the user typed it.  Call with opterr = 0. */
void ublk_getopt_error(int opt, char **argv, Error **errp);
/* Range and consistency checks (also applied by parse). */
int ublk_dev_config_check(const UblkDevConfig *c, Error **errp);
/* The graph to open: options (caller frees) and BDRV_O_* flags. */
OptDict *ublk_dev_config_to_options(const UblkDevConfig *c, int *flags, Error **errp);
/*
 * After `ublkd quorum` changed child index of the quorum node at option
 * prefix ("" for the root), make c open the new graph (so `recover` does):
 * c becomes its --blockdev form with children.N.* of that node dropped
 * (replace, remove), the ones after it renumbered (remove), and the new
 * child's options (dotted or json:) put in its place, with
 * children.N.rebuild=on if rebuild (the new child is not complete until
 * rebuilt: a recovered daemon rebuilds it again from 0).
 */
int ublk_dev_config_change_child(UblkDevConfig *c, const char *prefix, BdrvChildChange op,
                                 int index, const char *child_options, bool rebuild,
                                 Error **errp);
/* The fields that say which graph c opens, kept aside so that a change
 * recorded before it is made can be taken back if it then fails. */
typedef struct UblkGraphSave {
    char *type, *blockdev, *extra_opts;
    char **files;
    int nfiles;
} UblkGraphSave;
void ublk_dev_config_graph_save(const UblkDevConfig *c, UblkGraphSave *g);
/* Put g back into c (g is emptied). */
void ublk_dev_config_graph_restore(UblkDevConfig *c, UblkGraphSave *g);
void ublk_dev_config_graph_free(UblkGraphSave *g);
/* Drop children.index.rebuild: the child is complete.  1 if it was there. */
int ublk_dev_config_clear_rebuild(UblkDevConfig *c, const char *prefix, int index);
/* UBLK_F_* the config asks for, given what the kernel supports. */
uint64_t ublk_dev_config_flags(const UblkDevConfig *c, uint64_t supported, bool unprivileged);
/* Whether the open file fd (name: for messages) may be exec'ed as the new
 * daemon by uid: a regular executable file owned by root or uid and
 * writable by neither group nor others. */
int ublk_exec_check(int fd, const char *name, uid_t uid, Error **errp);
/*
 * The zero-copy flags (UBLK_F_AUTO_BUF_REG or UBLK_F_SUPPORT_ZERO_COPY, or 0
 * for the copy path) --zero-copy asks for, given the kernel's features:
 * -1 with errp set when on/register cannot be had (kernel without them, a
 * graph whose every request would bounce: graph_needs_bytes).  Auto quietly
 * copies then, and on unprivileged devices (which the kernel refuses zero
 * copy; on/register ask it anyway and report its answer).
 */
int ublk_dev_config_zero_copy_flags(const UblkDevConfig *c, uint64_t supported,
                                    bool unprivileged, bool graph_needs_bytes, uint64_t *flags,
                                    Error **errp);
/* "auto", "on", "off", "register" */
const char *ublk_zero_copy_name(UblkZeroCopy zc);
/* "off", "auto", "on" */
const char *ublk_batch_name(UblkBatch b);
/* UBLK_F_BATCH_IO if --batch asks for it and the kernel (supported, from
 * GET_FEATURES) has it, else 0; -1 with errp set when --batch=on cannot be
 * had (kernel without it, or --per-io-threads, which the kernel does not
 * grant a BATCH_IO device). */
int ublk_dev_config_batch_flag(const UblkDevConfig *c, uint64_t supported, uint64_t *flag,
                               Error **errp);
/* -1 with errp set when the kernel (features as GET_FEATURES reports them)
 * cannot honour what the user asked for: an explicit recovery mode it lacks
 * is an error, while the default (reissue) quietly falls back. */
int ublk_dev_config_check_kernel(const UblkDevConfig *c, uint64_t supported, bool unprivileged,
                                 Error **errp);
/* -1 with errp set when --log names a file the daemon could not write:
 * checked at add time, since the daemon's log has nowhere else to go. */
int ublk_dev_config_check_log(const UblkDevConfig *c, Error **errp);

/* What /run/ublkd/ID.json holds. */
typedef struct UblkDevState {
    UblkDevConfig cfg;
    uint32_t dev_id;
    pid_t pid;
    uint64_t start_time;       /* of pid, as ublk_proc_start_time: with the pid
                                  it names the daemon, not a later reuser */
    uint64_t flags;            /* UBLK_F_* the device was added with */
    unsigned nr_queues, depth; /* as the kernel granted */
    char *graph;               /* bdrv_graph_to_string of the root */
    char *bdev;                /* /dev/ublkbN */
    int64_t size;              /* device size in bytes as last set (add, resize,
                                  recover); 0 = not recorded (older ublkd) */
} UblkDevState;

void ublk_dev_state_free(UblkDevState *s);
/* NULL-free JSON text (caller frees); NULL without CONFIG_JSON. */
char *ublk_dev_state_to_json(const UblkDevState *s);
int ublk_dev_state_from_json(const char *json, UblkDevState *s, Error **errp);
/* Directory of state files: $UBLKD_RUN_DIR, /run/ublkd for root, else
 * $XDG_RUNTIME_DIR/ublkd or /tmp/ublkd-UID.  Created on demand by writers. */
const char *ublk_run_dir(void);
/* The run directory, opened (O_DIRECTORY fd) only if it is a directory, not
 * a symlink, owned by us and writable by nobody else; made 0700 (create
 * makes it if missing).  -1 with errp naming it otherwise (errno ENOENT
 * if it is just missing). */
int ublk_run_dir_open(bool create, Error **errp);
/* Files are written with O_EXCL | O_NOFOLLOW through a temporary + rename,
 * mode 0600. */
int ublk_state_write(const UblkDevState *s, Error **errp);
/* 0; -1 if there is no state file (errp: "no state for device N"); -2 if
 * there is one that must not be trusted: another user's, a symlink,
 * malformed, for another id, or the run directory is refused (errp says
 * which; the caller warns and ignores it). */
int ublk_state_read(uint32_t dev_id, UblkDevState *s, Error **errp);
/* Removes the state, counters and control socket names of dev_id. */
void ublk_state_remove(uint32_t dev_id);
/* Start time of a process (field 22 of /proc/PID/stat, clock ticks since
 * boot); 0 if it has none (gone).  A pid and its start time name one process
 * for the life of the system. */
uint64_t ublk_proc_start_time(pid_t pid);
/* Counters file next to the state file: rewritten by the daemon. */
int ublk_stats_write(uint32_t dev_id, const BlockAcctStats *st);
int ublk_stats_read(uint32_t dev_id, BlockAcctStats *st);

/* ---------------- remote children in `list` (ublk/list-remote.c) ---------------- */

/* A remote (nbd) node of the graph, from its counters in st. */
typedef struct UblkRemoteNode {
    char node[128];            /* its path as options name it: "file", "children.0.file";
                                * "" for the root */
    const char *driver;        /* "nbd" */
    const char *state;         /* "connected", "reconnecting", "failed" ("unknown": no flag set) */
    uint64_t reconnects;
} UblkRemoteNode;
/* Up to max of them into out, in the counters' order; returns how many. */
int ublk_stats_remote_nodes(const BlockAcctStats *st, UblkRemoteNode *out, int max);
/* Whether key is one of the counters those are made from (the raw list skips them). */
bool ublk_stats_is_remote_counter(const char *key);

/* ---------------- parameters (ublk/params.c) ---------------- */

/* Fill p (BASIC + DISCARD) from the config, the root's limits and size.
 * open_flags are the BDRV_O_* the graph was opened with (cache mode). */
int ublk_params_build(const UblkDevConfig *c, const BlockLimits *bl, int64_t size,
                      int open_flags, bool read_only, bool has_discard,
                      struct ublk_params *p, Error **errp);

/* ---------------- queues (ublk/queue.c) ---------------- */

/* A server thread: its own ring and AioContext, serving one hardware queue,
 * or with per-I/O threads its share of every queue's tags. */
typedef struct UblkQueue UblkQueue;

/* One ublk I/O descriptor as the block layer request it stands for. */
typedef struct UblkRequest {
    unsigned op;               /* UBLK_IO_OP_READ, _WRITE, _FLUSH, _DISCARD, _WRITE_ZEROES */
    int64_t offset, bytes;     /* bytes of the device; 0, 0 for a flush */
    BdrvRequestFlags flags;    /* BDRV_REQ_FUA (write), BDRV_REQ_MAY_UNMAP (write zeroes) */
} UblkRequest;

/*
 * Check the descriptor the kernel wrote for a tag and translate it (pure,
 * fuzzed by tests/fuzz/fuzz-ublk-desc.c): 0 with *req filled, or the -errno
 * to COMMIT: -EOPNOTSUPP for an op we do not serve, -EINVAL for a range
 * that does not lie within the dev_size bytes of the device (overflow
 * included) or a read/write larger than max_io_size (the tag's buffer).
 * An accepted read/write/discard/write-zeroes lies within the device.
 */
int ublk_io_desc_to_request(const struct ublksrv_io_desc *iod, int64_t dev_size,
                            uint32_t max_io_size, UblkRequest *req);

/* What the queue threads share: read-only once started (but size). */
typedef struct UblkDev {
    uint32_t dev_id;
    int cdev_fd;
    BlockBackend *blk;
    unsigned nr_queues, depth;
    uint32_t max_io_size;
    int64_t size;              /* bytes: requests beyond it are refused; the
                                  one field that changes while the queues run
                                  (resize): atomic loads and stores */
    uint64_t flags;            /* UBLK_F_* in effect */
    UblkAffinity affinity;
    UblkCtrl *ctrl;            /* for GET_QUEUE_AFFINITY (main thread only) */
    unsigned per_io_threads;   /* 0: thread i serves queue i; else UBLK_F_PER_IO_DAEMON
                                  and this many threads share all pairs */
    unsigned nr_threads;       /* set by ublk_queues_start */
    UblkQueue **queues;        /* the threads, nr_threads of them */
    volatile int stopping;     /* set by the main thread after STOP_DEV */
} UblkDev;

/*
 * Batched commands (UBLK_F_BATCH_IO) for one queue thread (ublk/queue-batch.c):
 * PREP_IO_CMDS for all tags at start, one multishot FETCH_IO_CMDS that wakes
 * the tags of new requests (wake(opaque, tag, UBLK_IO_RES_OK), or
 * UBLK_IO_RES_ABORT when the device goes away), and one COMMIT_IO_CMDS per
 * loop iteration (ublk_batch_flush) for the tags that finished in it.
 */
typedef struct UblkBatchQueue UblkBatchQueue;
typedef void UblkBatchWakeFn(void *opaque, unsigned tag, int res);
typedef struct UblkBatchSetup {
    AioContext *ctx;           /* the queue thread's; /dev/ublkcN is fixed file 0 if cdev_fixed */
    UblkDev *d;
    unsigned q_id, ntags;
    bool cdev_fixed;
    char *bufs;                /* tag buffers (the kernel copies), else NULL */
    size_t buf_stride;
    uint16_t buf_index_base;   /* AUTO_BUF_REG: tag t's pages go to index base + t */
    UblkBatchWakeFn *wake;
    void *opaque;
} UblkBatchSetup;
UblkBatchQueue *ublk_batch_new(const UblkBatchSetup *s, Error **errp);
/* After every tag called ublk_batch_tag_ready(commit = false). */
int ublk_batch_start(UblkBatchQueue *b, Error **errp);
/* A tag waits for its next request, first committing result if commit:
 * false when the device went away (the tag's loop ends). */
bool ublk_batch_tag_ready(UblkBatchQueue *b, unsigned tag, bool commit, int result);
void ublk_batch_flush(UblkBatchQueue *b);
/* Before the thread ends: the last commits reach the kernel (tags that
 * finished after the FETCH ended leave their loops with them pending). */
void ublk_batch_drain(UblkBatchQueue *b);
/* After the ring is freed. */
void ublk_batch_free(UblkBatchQueue *b);
/* Requests whose pages the kernel could not register (UBLK_IO_F_NEED_REG_BUF)
 * that the daemon registered itself. */
uint64_t ublk_zc_reg_fallback_count(void);

/* Start the server threads (nr_queues, or per_io_threads capped at the
 * number of tags); returns once every thread has queued its FETCH commands
 * (so START_DEV / END_USER_RECOVERY can complete). */
int ublk_queues_start(UblkDev *d, Error **errp);
/* Tell the queues the device is going away and wait for the threads. */
void ublk_queues_stop(UblkDev *d);
/* Number of server threads still running (a queue exits when the kernel
 * aborts all its commands, e.g. the device was deleted behind our back). */
unsigned ublk_queues_running(UblkDev *d);

/* ---------------- the control socket (ublk/ctlsock.c) ---------------- */

/*
 * Each daemon listens on RUNDIR/ID.sock (in the checked run directory, so
 * only its owner and root reach it) for requests that must run inside the
 * daemon, because it owns the image: one request per connection, one line
 * of JSON each way, at most UBLK_CTL_MAX_MSG bytes:
 *   -> {"ublkd-ctl": 1, "op": "resize", "size": BYTES, "shrink": false}
 *   <- {"ublkd-ctl": 1, "ok": true, "size": BYTES, "old_size": BYTES}
 *   <- {"ublkd-ctl": 1, "ok": false, "errno": N, "error": "message"}
 *   -> {"ublkd-ctl": 1, "op": "upgrade", "cancel": false}  (for the next
 *      60 s the daemon hands the device over when its queues end or on
 *      SIGTERM, instead of deleting it; "cancel": true undoes that after a
 *      failed QUIESCE_DEV: see cmd_upgrade)
 *   -> {"ublkd-ctl": 1, "op": "quorum", "change": "replace"|"add"|"remove",
 *       "index": N, "options": "driver=raw,file.filename=/abs/path"}
 *      (the device's topmost quorum node; add takes index -1; remove has no
 *      options)  <- ok replies add "index": the child changed
 *   -> {"ublkd-ctl": 1, "op": "snapshot", "name": "NAME"}  (an internal
 *      snapshot of the image, I/O drained meanwhile)  <- ok replies add
 *      "snapshot_id": "ID" and "pause_ns": how long I/O was held
 * A request of another version is answered with an error naming both; a
 * new verb is a new "op" (and fields), the version changes only when an
 * old field changes meaning.
 */
#define UBLK_CTL_VERSION 1
#define UBLK_CTL_MAX_MSG 4096

typedef enum { UBLK_CTL_RESIZE = 1, UBLK_CTL_UPGRADE, UBLK_CTL_QUORUM, UBLK_CTL_SNAPSHOT } UblkCtlOp;

typedef struct UblkCtlRequest {
    UblkCtlOp op;
    uint64_t size;             /* resize: the new size in bytes */
    bool shrink;               /* resize: a smaller size is meant */
    bool cancel;               /* upgrade: the QUIESCE_DEV failed, serve on */
    BdrvChildChange change;    /* quorum: "replace", "add" or "remove" */
    int index;                 /* quorum: the child (add: -1, the next) */
    char options[UBLK_CTL_MAX_MSG]; /* quorum: the new child's options (replace, add);
                                     * snapshot: its name */
} UblkCtlRequest;

typedef struct UblkCtlReply {
    bool ok;
    int err;                   /* errno when !ok */
    char *message;             /* the error (what and where) when !ok; malloc'ed */
    uint64_t size, old_size;   /* resize: the device's size after and before */
    int index;                 /* quorum: the child changed (-1: not a quorum reply) */
    char snapshot_id[128];     /* snapshot: the new snapshot's id ("": not a snapshot reply) */
    uint64_t pause_ns;         /* snapshot: how long I/O was held */
} UblkCtlReply;

/* Pure, unit-tested.  The texts are one line, no newline; NULL without
 * CONFIG_JSON.  Parsers refuse (naming the field) anything but the types
 * and ranges above, unknown ops and other versions. */
char *ublk_ctl_request_to_json(const UblkCtlRequest *r);
int ublk_ctl_request_parse(const char *text, UblkCtlRequest *r, Error **errp);
char *ublk_ctl_reply_to_json(const UblkCtlReply *r);
int ublk_ctl_reply_parse(const char *text, UblkCtlReply *r, Error **errp);
void ublk_ctl_reply_free(UblkCtlReply *r);
/* Who may use a daemon's socket: root, or the daemon's own user. */
bool ublk_ctl_peer_allowed(uid_t peer_uid, uid_t daemon_uid);
/*
 * Whether a device of cur bytes (logical block logical_bs) may become
 * new_size bytes: 0 yes, 1 it already is (nothing to do), -1 with errp
 * set: zero, not a multiple of the logical block size, beyond the largest
 * image, or smaller without shrink (the data past new_size would go).
 */
int ublk_resize_check(int64_t cur, uint64_t new_size, bool shrink, uint32_t logical_bs,
                      Error **errp);
/* "ID.sock" */
void ublk_ctl_socket_name(uint32_t dev_id, char *buf, size_t len);

/* The daemon's side.  The handler runs in a coroutine on ctx (it may yield:
 * truncate, drain) and fills the reply; one request at a time, and the
 * listening socket is not watched meanwhile (others wait in its backlog). */
typedef struct UblkCtlServer UblkCtlServer;
typedef void UblkCtlHandler(void *opaque, const UblkCtlRequest *req, UblkCtlReply *reply);
struct AioContext;
/* Binds RUNDIR/ID.sock (replacing a dead daemon's) and starts watching it. */
UblkCtlServer *ublk_ctl_server_new(struct AioContext *ctx, uint32_t dev_id, UblkCtlHandler *fn,
                                   void *opaque, Error **errp);
/* A request is being read or handled: the loop must run until it is done. */
bool ublk_ctl_server_busy(const UblkCtlServer *s);
/* Stops watching, closes and unlinks the socket (if it is still ours). */
void ublk_ctl_server_free(UblkCtlServer *s);
/* Requests refused for the peer's credentials so far (tests, logs). */
unsigned ublk_ctl_server_refused(const UblkCtlServer *s);

/*
 * The client's side (blocking, for the verbs): send req to the daemon of
 * dev_id and wait up to timeout_ms for its reply.  The socket must be
 * served by daemon_pid (when > 0; SO_PEERCRED) under root or our uid, so a
 * socket left by a dead daemon, or a process that took over its name,
 * is never believed.  -1 with errp set when no reply came (no socket,
 * nobody listening, refused, timeout); 0 with *reply filled otherwise
 * (which may be an error the daemon sent).
 */
int ublk_ctl_call(uint32_t dev_id, pid_t daemon_pid, const UblkCtlRequest *req,
                  UblkCtlReply *reply, int timeout_ms, Error **errp);

/* ---------------- the daemon (ublk/server.c) ---------------- */

/*
 * Run a device until SIGTERM/SIGINT or until the kernel takes it away.
 * recover: attach to an existing quiesced device (cfg->dev_id) instead of
 * adding one.  ready_fd (or -1): the daemon writes "OK <bdev>\n" once the
 * block device is usable, or "ERR <message>\n", then closes it.
 * Returns the process exit code.
 */
int ublk_server_run(UblkDevConfig *cfg, bool recover, int ready_fd);

/* Per-device log: syslog (ident "ublkd/ID"), the --log file, or stderr. */
void ublk_log_open(const UblkDevConfig *cfg, int dev_id);
void ublk_log(int prio, const char *fmt, ...) PRINTF_FMT(2, 3);

#endif
