/*
 * server.c - the daemon behind one ublk device (see include/ublk.h).
 *
 * Order matters and is dictated by the kernel:
 *   open the graph and build the params (fail early, before the kernel
 *   knows about us)
 *   ADD_DEV + SET_PARAMS       (or START_USER_RECOVERY when recovering)
 *   open /dev/ublkcN, start the queue threads, each queues its FETCHes
 *   START_DEV(pid)             (or END_USER_RECOVERY(pid)); waits for the FETCHes
 *   control socket, state file, "OK" to whoever is waiting for us
 *   ... serve: the main thread runs its AioContext (signals, the stats
 *   timer, control requests such as resize, the graph's background work)
 *   until SIGTERM/SIGINT/SIGHUP, or until the queues die ...
 *   STOP_DEV (the kernel drains in-flight I/O while the queues still run)
 *   join the queues, close the char device, drain + flush + close the graph
 *   DEL_DEV (returns once the char device is released), remove the state
 * Any failure after ADD_DEV unwinds through the same tail, so a failed add
 * leaves no device behind; the id the tail deletes is recorded the moment
 * ADD_DEV returns it, never the -1/0 we asked with.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include "aio.h"
#include "iov-fixed.h"
#include "block-snapshot.h"
#include "ublk.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

/* ---- logging ---- */

static enum { LOG_TO_STDERR, LOG_TO_SYSLOG, LOG_TO_FILE } log_mode = LOG_TO_STDERR;
static FILE *log_file;
static char log_ident[32] = "ublkd";

void ublk_log_open(const UblkDevConfig *cfg, int dev_id)
{
    if (dev_id >= 0) {
        snprintf(log_ident, sizeof(log_ident), "ublkd/%d", dev_id);
    }
    if (cfg->log_file) {
        if (!log_file) {
            /* Not through a symlink (see spawn_daemon), and not world-readable. */
            int fd = open(cfg->log_file, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC,
                          0600);
            log_file = fd >= 0 ? fdopen(fd, "a") : NULL;
            if (fd >= 0 && !log_file) {
                close(fd);
            }
        }
        if (log_file) {
            setvbuf(log_file, NULL, _IOLBF, 0);
            log_mode = LOG_TO_FILE;
            return;
        }
    }
    if (cfg->foreground) {
        log_mode = LOG_TO_STDERR;
    } else {
        closelog();
        openlog(log_ident, LOG_PID, LOG_DAEMON);
        log_mode = LOG_TO_SYSLOG;
    }
}

void ublk_log(int prio, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (log_mode == LOG_TO_SYSLOG) {
        vsyslog(prio, fmt, ap);
    } else {
        FILE *f = log_mode == LOG_TO_FILE ? log_file : stderr;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        char when[32];
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        flockfile(f);
        fprintf(f, "%s %s[%d]: ", when, log_ident, (int)getpid());
        vfprintf(f, fmt, ap);
        fputc('\n', f);
        funlockfile(f);
    }
    va_end(ap);
}

/* ---- helpers ---- */

static void report(int *ready_fd, const char *status, const char *msg)
{
    if (*ready_fd < 0) {
        return;
    }
    char line[2048];
    int n = snprintf(line, sizeof(line), "%s %s\n", status, msg);
    if (n > (int)sizeof(line) - 1) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(*ready_fd, line, n);
    (void)w;
    close(*ready_fd);
    *ready_fd = -1;
}

/* A warning for whoever runs `ublkd add`: the daemon's own stderr is
 * /dev/null by then.  Sent ahead of the final OK/ERR line. */
static void warn_parent(int ready_fd, const char *msg)
{
    if (ready_fd < 0) {
        return;                /* foreground: the log is stderr already */
    }
    char line[512];
    int n = snprintf(line, sizeof(line), "WARN %s\n", msg);
    ssize_t w = write(ready_fd, line, MIN(n, (int)sizeof(line) - 1));
    (void)w;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* devtmpfs (or udev) creates the nodes asynchronously: wait a little. */
static int open_retry(const char *path, int flags, unsigned timeout_ms)
{
    for (unsigned waited = 0;; waited += 10) {
        int fd = open(path, flags);
        if (fd >= 0 || (errno != ENOENT && errno != EACCES) || waited >= timeout_ms) {
            return fd;
        }
        sleep_ms(10);
    }
}

static int open_cdev(UblkDev *d, uint32_t dev_id, bool unpriv, Error **errp)
{
    char cdev[64];
    ublk_cdev_path(dev_id, cdev, sizeof(cdev));
    /* devtmpfs makes root's node at once; an unprivileged user waits for
     * udev's rule, which a loaded machine can take seconds to run. */
    d->cdev_fd = open_retry(cdev, O_RDWR | O_CLOEXEC, unpriv ? 10000 : 3000);
    if (d->cdev_fd < 0) {
        error_setg_errno(errp, errno, "cannot open %s%s", cdev,
                         unpriv ? " (unprivileged: does a udev rule give it to you?)" : "");
        return -1;
    }
    return 0;
}

static bool wait_for_bdev(const char *path, unsigned timeout_ms)
{
    struct stat st;
    for (unsigned waited = 0; waited < timeout_ms; waited += 10) {
        if (stat(path, &st) == 0 && S_ISBLK(st.st_mode)) {
            return true;
        }
        sleep_ms(10);
    }
    return false;
}

/*
 * --io-scheduler: a 1-queue ublk device gets mq-deadline from the kernel, and
 * on 7.x every request of a device with an elevator takes a trip through a
 * kblockd worker (docs/PERFORMANCE.md: 2-3x slower 4k I/O); the image below
 * does its own ordering, so "none" is the default.  "kernel" leaves the
 * kernel's (or a udev rule's) choice.  A name the kernel does not offer is an
 * error only when the user gave it: the default is a tuning that an
 * unprivileged daemon (sysfs is root's) goes without, with a note.
 */
static int apply_io_scheduler(const UblkDevConfig *cfg, uint32_t dev_id, Error **errp)
{
    const char *want = cfg->io_scheduler ? cfg->io_scheduler : "none";
    if (!strcmp(want, "kernel")) {
        return 0;
    }
    char path[96];
    snprintf(path, sizeof(path), "/sys/block/ublkb%u/queue/scheduler", dev_id);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
        ssize_t n = write(fd, want, strlen(want));
        err = n < 0 ? errno : n != (ssize_t)strlen(want) ? EIO : 0;
        close(fd);
    }
    if (!err) {
        return 0;
    }
    char offered[256] = "";
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, offered, sizeof(offered) - 1);
        offered[n > 0 ? n : 0] = 0;
        offered[strcspn(offered, "\n")] = 0;
        close(fd);
    }
    if (!cfg->io_scheduler) {
        ublk_log(LOG_NOTICE, "device %u: could not set the I/O scheduler to none (%s: %s); "
                 "it stays [%s]", dev_id, path, strerror(err), offered);
        return 0;
    }
    error_setg(errp, "device %u: --io-scheduler %s: %s: %s (the kernel offers: %s)", dev_id,
               want, path, strerror(err), offered[0] ? offered : "unknown");
    return -1;
}

/* ---- the daemon ---- */

typedef struct Server {
    UblkDevConfig *cfg;
    UblkCtrl *ctrl;
    UblkDev dev;
    BlockBackend *blk;
    UblkCtlServer *ctl;
    bool added, started;
    bool stopping;             /* the serve loop is ending: no new resize */
    int64_t upgrade_until;     /* `upgrade` asked: QUIESCE_DEV will end the queues
                                  before this (CLOCK_MONOTONIC ns) */
    bool handover;             /* ...and it did: leave the device to the next daemon */
    char bdev[64];
    /* Quorum children the state file marks children.N.rebuild=on (of the
     * node at quorum_prefix): cleared there once the child is complete. */
    uint32_t rebuild_marked;
    char quorum_prefix[256];
} Server;

static int server_write_state(Server *s, Error **errp)
{
    UblkDev *d = &s->dev;
    UblkDevState st = {
        .cfg = *s->cfg, .dev_id = d->dev_id, .pid = getpid(),
        .start_time = ublk_proc_start_time(getpid()), .flags = d->flags,
        .nr_queues = d->nr_queues, .depth = d->depth, .bdev = s->bdev,
        .size = __atomic_load_n(&d->size, __ATOMIC_ACQUIRE),
    };
    st.graph = blk_bs(s->blk) ? bdrv_graph_to_string(blk_bs(s->blk)) : NULL;
    int ret = ublk_state_write(&st, errp);
    free(st.graph);
    return ret;
}

static void server_ctl(void *opaque, const UblkCtlRequest *req, UblkCtlReply *rep);

static int64_t server_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static bool server_upgrading(const Server *s)
{
    return s->upgrade_until && server_now_ns() < s->upgrade_until;
}

static int wait_quiesced(Server *s, struct ublksrv_ctrl_dev_info *info, Error **errp)
{
    uint32_t id = s->cfg->dev_id;
    for (int i = 0; i < 500; i++) {
        int ret = ublk_ctrl_get_info(s->ctrl, id, info);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "device %u: cannot get its state", id);
            return -1;
        }
        if (info->state == UBLK_S_DEV_QUIESCED || info->state == UBLK_S_DEV_FAIL_IO) {
            return 0;
        }
        if (info->state == UBLK_S_DEV_LIVE && info->ublksrv_pid > 0 &&
            kill(info->ublksrv_pid, 0) == 0 && i > 100) {
            error_setg(errp, "device %u is live and served by pid %d: nothing to recover", id,
                       info->ublksrv_pid);
            return -1;
        }
        if (info->state == UBLK_S_DEV_DEAD) {
            error_setg(errp, "device %u is not started (state DEAD): nothing to recover", id);
            return -1;
        }
        sleep_ms(10);
    }
    error_setg(errp, "device %u did not become QUIESCED (state %s): was it added with recovery?",
               id, ublk_state_name(info->state));
    return -1;
}

static int server_start(Server *s, bool recover, int ready_fd, Error **errp)
{
    UblkDevConfig *cfg = s->cfg;
    int flags = 0;

    if (!aio_main_init(errp)) {
        return -1;
    }
    OptDict *opts = ublk_dev_config_to_options(cfg, &flags, errp);
    if (!opts) {
        return -1;
    }
    /*
     * A daemon killed with -9 can hold its image locks for a moment after it
     * is gone (io_uring drops its file references from a worker), and
     * recovery starts as soon as the kernel reports the device QUIESCED: give
     * a lock conflict a few seconds to clear before calling it one.
     */
    for (int tries = recover ? 50 : 1;; tries--) {
        OptDict *o = tries > 1 ? optdict_clone(opts) : opts;
        Error *local = NULL;
        s->blk = blk_new_open(NULL, o, flags, &local);
        if (s->blk || tries <= 1 || error_get_errno(local) != EAGAIN) {
            if (o != opts) {
                optdict_free(opts);
            }
            error_propagate(errp, local);
            break;
        }
        error_free(local);
        usleep(100 * 1000);
    }
    if (!s->blk) {
        /* As `ublkd img` says it: which image, and for a lock conflict the
         * hint on the line after. */
        const char *what = cfg->nfiles == 1 ? cfg->files[0] : NULL;
        if (what && errp && *errp && !strstr(error_get_pretty(*errp), "Could not open")) {
            error_prepend(errp, "Could not open '%s': ", what);
        }
        return -1;
    }
    int64_t size = blk_getlength(s->blk);
    if (size < 0) {
        BlockDriverState *bs = blk_bs(s->blk);
        error_setg_errno(errp, (int)-size, "cannot get the size of the image%s%s",
                         bs && bdrv_get_filename(bs)[0] ? " " : "",
                         bs ? bdrv_get_filename(bs) : "");
        return -1;
    }
    bool read_only = cfg->read_only || blk_is_read_only(s->blk);

    s->ctrl = ublk_ctrl_open(errp);
    if (!s->ctrl) {
        return -1;
    }
    uint64_t features;
    int ret = ublk_ctrl_get_features(s->ctrl, &features, NULL);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "GET_FEATURES on %s failed", UBLK_CONTROL_PATH);
        return -1;
    }
    bool unpriv = ublk_ctrl_unprivileged(s->ctrl);
    if (cfg->user_copy && !(features & UBLK_F_USER_COPY)) {
        error_setg(errp, "--user-copy: the kernel's ublk driver lacks UBLK_F_USER_COPY");
        return -1;
    }
    if (cfg->user_copy && unpriv) {
        error_setg(errp, "--user-copy is not allowed for unprivileged devices");
        return -1;
    }
    if (unpriv && !(features & UBLK_F_UNPRIVILEGED_DEV)) {
        error_setg(errp, "not root and the kernel lacks UBLK_F_UNPRIVILEGED_DEV");
        return -1;
    }
    if (!recover && ublk_dev_config_check_kernel(cfg, features, unpriv, errp) < 0) {
        return -1;
    }
    uint64_t zc_flags = 0;
    if (!recover && ublk_dev_config_zero_copy_flags(cfg, features, unpriv,
                                                    bdrv_graph_needs_mapped_data(blk_bs(s->blk)),
                                                    &zc_flags, errp) < 0) {
        return -1;
    }
    uint64_t batch_flag = 0;
    if (!recover && ublk_dev_config_batch_flag(cfg, features, &batch_flag, errp) < 0) {
        return -1;
    }

    struct ublksrv_ctrl_dev_info info;
    if (recover) {
        if (wait_quiesced(s, &info, errp) < 0) {
            return -1;
        }
        if (!(info.flags & UBLK_F_USER_RECOVERY)) {
            error_setg(errp, "device %d was not added with recovery support", cfg->dev_id);
            return -1;
        }
        for (int i = 0;; i++) {
            ret = ublk_ctrl_start_recovery(s->ctrl, cfg->dev_id);
            /* EBUSY until the dead daemon's char device is fully released. */
            if (ret != -EBUSY || i > 500) {
                break;
            }
            sleep_ms(10);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "device %d: START_USER_RECOVERY failed", cfg->dev_id);
            return -1;
        }
        /* The kernel keeps the size a resize gave it; the image has its own.
         * A resize orders its steps so that a daemon killed between them
         * leaves the image the larger (harmless: the kernel sends nothing
         * past its size); the other way round someone changed the image. */
        struct ublk_params kp;
        if (ublk_ctrl_get_params(s->ctrl, cfg->dev_id, &kp) == 0 &&
            (int64_t)(kp.basic.dev_sectors << 9) != size) {
            char msg[256];
            snprintf(msg, sizeof(msg), "device %d is %llu bytes in the kernel, its image %lld "
                     "bytes%s", cfg->dev_id, (unsigned long long)kp.basic.dev_sectors << 9,
                     (long long)size, (int64_t)(kp.basic.dev_sectors << 9) > size
                     ? ": requests past the image's end will fail (was the image truncated?)"
                     : " (a resize was interrupted: run it again)");
            ublk_log(LOG_WARNING, "%s", msg);
            warn_parent(ready_fd, msg);
        }
    } else {
        /* Everything that can be refused without the kernel is refused
         * before ADD_DEV, so a bad argument never creates a device. */
        struct ublk_params p;
        BlockDriverState *root = blk_bs(s->blk);
        bool can_discard = true;
        if (ublk_params_build(cfg, root ? bdrv_get_limits(root) : NULL, size, flags, read_only,
                              can_discard, &p, errp) < 0) {
            return -1;
        }
        if (zc_flags && root) {
            /* The request's own pages go to O_DIRECT backing I/O: each
             * segment must meet the backing's memory alignment (the kernel
             * default is 512), which the kernel takes at most page-sized. */
            size_t align = bdrv_get_limits(root)->min_mem_alignment;
            if (align > 512) {
                p.types |= UBLK_PARAM_TYPE_DMA_ALIGN;
                p.dma.alignment = (uint32_t)MIN(align, (size_t)4096) - 1;
            }
        }
        memset(&info, 0, sizeof(info));
        info.nr_hw_queues = cfg->nr_queues;
        info.queue_depth = cfg->depth;
        info.max_io_buf_bytes = cfg->max_io_size;
        info.dev_id = cfg->dev_id < 0 ? (uint32_t)-1 : (uint32_t)cfg->dev_id;
        info.ublksrv_pid = getpid();
        info.flags = ublk_dev_config_flags(cfg, features, unpriv) | zc_flags | batch_flag;
        ret = ublk_ctrl_add_dev(s->ctrl, &info);
        if (ret == -EEXIST) {
            error_setg(errp, "device id %d is already in use", cfg->dev_id);
            return -1;
        }
        if (ret < 0 && zc_flags) {
            char fl[128];
            ublk_flags_to_string(zc_flags, fl, sizeof(fl));
            if (cfg->zero_copy != UBLK_ZC_AUTO) {
                error_setg_errno(errp, -ret, "--zero-copy=%s: the kernel refused %s to %s "
                                 "(ADD_DEV flags 0x%llx)%s", ublk_zero_copy_name(cfg->zero_copy),
                                 fl, unpriv ? "an unprivileged device" : "this device",
                                 (unsigned long long)info.flags,
                                 unpriv ? "; zero copy needs a device added with CAP_SYS_ADMIN "
                                          "(use --zero-copy=off or auto)" : "");
                return -1;
            }
            /* auto: a kernel that advertises zero copy but refuses it here
             * gets the copy path, and the log says why. */
            ublk_log(LOG_NOTICE, "ADD_DEV with %s failed (%s): copying instead", fl,
                     strerror(-ret));
            info.flags &= ~zc_flags;
            info.dev_id = cfg->dev_id < 0 ? (uint32_t)-1 : (uint32_t)cfg->dev_id;
            p.types &= ~UBLK_PARAM_TYPE_DMA_ALIGN;
            ret = ublk_ctrl_add_dev(s->ctrl, &info);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "ADD_DEV (queues %u, depth %u, flags 0x%llx) failed",
                             cfg->nr_queues, cfg->depth, (unsigned long long)info.flags);
            return -1;
        }
        /* From here on a failure deletes this id, so it must be the one the
         * kernel gave us (with -n unset, cfg->dev_id was -1). */
        s->dev.dev_id = info.dev_id;
        s->added = true;
        cfg->dev_id = info.dev_id;
        ublk_log_open(cfg, cfg->dev_id);
        if (zc_flags && (info.flags & zc_flags) != zc_flags) {
            /* The kernel writes back the flags it granted: one that dropped
             * zero copy quietly must not leave on/register copying. */
            if (cfg->zero_copy != UBLK_ZC_AUTO) {
                error_setg(errp, "--zero-copy=%s: the kernel added the device without it "
                           "(flags 0x%llx)", ublk_zero_copy_name(cfg->zero_copy),
                           (unsigned long long)info.flags);
                return -1;
            }
            ublk_log(LOG_NOTICE, "the kernel did not grant zero copy (flags 0x%llx): copying",
                     (unsigned long long)info.flags);
        }
        if (batch_flag && !(info.flags & batch_flag)) {
            if (cfg->batch == UBLK_BATCH_ON) {
                error_setg(errp, "--batch=on: the kernel added the device without "
                           "UBLK_F_BATCH_IO (flags 0x%llx)", (unsigned long long)info.flags);
                return -1;
            }
            ublk_log(LOG_NOTICE, "the kernel did not grant UBLK_F_BATCH_IO (flags 0x%llx): "
                     "one command per request", (unsigned long long)info.flags);
        }
        if (info.nr_hw_queues < cfg->nr_queues) {
            /* The kernel caps queues at the number of possible CPUs. */
            char msg[160];
            snprintf(msg, sizeof(msg), "--queues %u: the kernel granted %u (one per possible CPU)",
                     cfg->nr_queues, info.nr_hw_queues);
            ublk_log(LOG_WARNING, "%s", msg);
            warn_parent(ready_fd, msg);
        }

        /* The kernel checks every command on an unprivileged device against
         * our access to its char device, which udev (or whatever stands in
         * for it) hands over asynchronously: SET_PARAMS right after ADD_DEV
         * fails with EACCES unless we wait for it. */
        if (unpriv && open_cdev(&s->dev, info.dev_id, unpriv, errp) < 0) {
            return -1;
        }
        if (p.basic.max_sectors > info.max_io_buf_bytes >> 9) {
            p.basic.max_sectors = info.max_io_buf_bytes >> 9;
        }
        ret = ublk_ctrl_set_params(s->ctrl, info.dev_id, &p);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "device %u: SET_PARAMS (logical block %u, %llu sectors) failed",
                             info.dev_id, 1U << p.basic.logical_bs_shift,
                             (unsigned long long)p.basic.dev_sectors);
            return -1;
        }
    }

    UblkDev *d = &s->dev;
    d->dev_id = cfg->dev_id;
    d->blk = s->blk;
    d->nr_queues = info.nr_hw_queues;
    d->depth = info.queue_depth;
    d->max_io_size = MIN(info.max_io_buf_bytes, (uint32_t)cfg->max_io_size);
    d->size = size;
    if (recover) {
        d->max_io_size = info.max_io_buf_bytes;
    }
    d->flags = info.flags;
    d->affinity = cfg->affinity;
    d->ctrl = s->ctrl;
    /* The flag, given at ADD_DEV, is what lets a tag be served by any one
     * task; a recovering daemon takes the layout its state recorded. */
    d->per_io_threads = (info.flags & UBLK_F_PER_IO_DAEMON) ? cfg->per_io_threads : 0;
    if (cfg->per_io_threads && !d->per_io_threads) {
        if (!recover) {
            error_setg(errp, "--per-io-threads: the kernel added device %u without "
                       "UBLK_F_PER_IO_DAEMON (flags 0x%llx)", d->dev_id,
                       (unsigned long long)info.flags);
            return -1;
        }
        ublk_log(LOG_NOTICE, "device %u was added without UBLK_F_PER_IO_DAEMON: one thread "
                 "per queue instead of --per-io-threads %u", d->dev_id, cfg->per_io_threads);
    }
    char cdev[64];
    ublk_cdev_path(d->dev_id, cdev, sizeof(cdev));
    if (d->cdev_fd < 0 && open_cdev(d, d->dev_id, unpriv, errp) < 0) {
        return -1;
    }
    /* The queue threads inherit this.  Without it (no CAP_SYS_RESOURCE)
     * memory reclaim may wait on writeback to our own device. */
    if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0) {
        ublk_log(LOG_NOTICE, "PR_SET_IO_FLUSHER: %s: reclaim that writes to %s could deadlock "
                 "under memory pressure", strerror(errno), cdev);
    }
    if (ublk_queues_start(d, errp) < 0) {
        return -1;
    }
    ret = recover ? ublk_ctrl_end_recovery(s->ctrl, d->dev_id, getpid())
                  : ublk_ctrl_start_dev(s->ctrl, d->dev_id, getpid());
    if (ret < 0) {
        error_setg_errno(errp, -ret, "device %u: %s failed", d->dev_id,
                         recover ? "END_USER_RECOVERY" : "START_DEV");
        return -1;
    }
    s->started = true;
    ublk_bdev_path(d->dev_id, s->bdev, sizeof(s->bdev));
    if (!wait_for_bdev(s->bdev, 5000)) {
        error_setg(errp, "%s did not appear", s->bdev);
        return -1;
    }
    /* A recovered device kept its queue settings, and a user's since. */
    if (!recover && apply_io_scheduler(cfg, d->dev_id, errp) < 0) {
        return -1;
    }

    /* Before the state file: a verb that finds the state may talk to us. */
    s->ctl = ublk_ctl_server_new(aio_current(), d->dev_id, server_ctl, s, errp);
    if (!s->ctl) {
        return -1;
    }
    /* A recovered graph may hold children.N.rebuild=on: their rebuild has
     * begun again; the mark goes when they are complete. */
    s->rebuild_marked = bdrv_incomplete_children(
        bdrv_find_child_changer(blk_bs(s->blk), s->quorum_prefix, sizeof(s->quorum_prefix)));
    return server_write_state(s, errp);
}

/* ---- resize (a control request, in a coroutine on the main thread) ---- */

/*
 * The image and the kernel's idea of the device must never disagree in the
 * direction that loses data: the kernel may send a request only for bytes
 * the image has.  So growing truncates the image first and then tells the
 * kernel (UPDATE_SIZE); shrinking tells the kernel first (it sends nothing
 * past the new end from then on), lowers the queues' bound, drains what was
 * already in flight, and only then truncates.  A failed second step undoes
 * the first where it can, and the error says what was undone.
 */
static int coroutine_fn server_resize(Server *s, uint64_t new_size, bool shrink,
                                      UblkCtlReply *rep, Error **errp)
{
    UblkDev *d = &s->dev;
    uint32_t id = d->dev_id;
    int64_t old = __atomic_load_n(&d->size, __ATOMIC_ACQUIRE);
    rep->old_size = rep->size = (uint64_t)old;
    if (s->stopping) {
        error_setg_code(errp, ESHUTDOWN, "device %u is being removed", id);
        return -1;
    }
    /* What the request itself gets wrong first, then what this image and
     * this kernel cannot do: nothing is changed before all have passed. */
    struct ublk_params p;
    int ret = ublk_ctrl_get_params(s->ctrl, id, &p);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "device %u: GET_PARAMS failed", id);
        return -1;
    }
    if (s->cfg->read_only || blk_is_read_only(s->blk) || (p.basic.attrs & UBLK_ATTR_READ_ONLY)) {
        error_setg_code(errp, EROFS, "device %u is read-only: its image cannot be resized", id);
        return -1;
    }
    Error *local = NULL;
    ret = ublk_resize_check(old, new_size, shrink, 1U << p.basic.logical_bs_shift, &local);
    if (ret != 0) {
        if (ret < 0) {
            error_propagate(errp, local);
            error_prepend(errp, "device %u: ", id);
            return -1;
        }
        return 0;                /* already that size */
    }
    BlockDriverState *bs = blk_bs(s->blk), *which = NULL;
    if (!bdrv_can_truncate(bs, &which)) {
        const char *fmt = which ? bdrv_get_format_name(which) : "?";
        error_setg_code(errp, EOPNOTSUPP, "device %u: %s: resize not supported by the %s "
                        "driver yet (nothing changed)", id,
                        which && bdrv_get_filename(which)[0] ? bdrv_get_filename(which) : "image",
                        fmt);
        return -1;
    }
    uint64_t features;
    ret = ublk_ctrl_get_features(s->ctrl, &features, NULL);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "device %u: GET_FEATURES failed", id);
        return -1;
    }
    if (!(features & UBLK_F_UPDATE_SIZE)) {
        error_setg_code(errp, EOPNOTSUPP, "device %u: resizing a device in use needs Linux >= "
                        "6.14; this kernel's ublk driver lacks UPDATE_SIZE (nothing changed)", id);
        return -1;
    }
    uint64_t sectors = new_size >> 9;
    if ((int64_t)new_size > old) {
        if (blk_truncate(s->blk, (int64_t)new_size, true, PREALLOC_MODE_OFF, &local) < 0) {
            error_propagate(errp, local);
            error_prepend(errp, "device %u: growing the image to %llu bytes failed (nothing "
                          "changed): ", id, (unsigned long long)new_size);
            return -1;
        }
        __atomic_store_n(&d->size, (int64_t)new_size, __ATOMIC_RELEASE);
        ret = ublk_ctrl_update_size(s->ctrl, id, sectors);
        if (ret < 0) {
            __atomic_store_n(&d->size, old, __ATOMIC_RELEASE);
            int u = blk_truncate(s->blk, old, true, PREALLOC_MODE_OFF, &local);
            error_setg_errno(errp, -ret, "device %u: UPDATE_SIZE to %llu sectors failed; %s%s%s",
                             id, (unsigned long long)sectors,
                             u == 0 ? "the image was truncated back to its old size" :
                                      "truncating the image back to its old size failed too (",
                             u == 0 ? "" : error_get_pretty(local), u == 0 ? "" : ")");
            error_free(local);
            return -1;
        }
    } else {
        ret = ublk_ctrl_update_size(s->ctrl, id, sectors);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "device %u: UPDATE_SIZE to %llu sectors failed "
                             "(nothing changed)", id, (unsigned long long)sectors);
            return -1;
        }
        /* The kernel sends nothing past the new end now; what it sent
         * before either passed this bound already (and is drained) or is
         * refused by it. */
        __atomic_store_n(&d->size, (int64_t)new_size, __ATOMIC_RELEASE);
        blk_drain(s->blk);
        if (blk_truncate(s->blk, (int64_t)new_size, true, PREALLOC_MODE_OFF, &local) < 0) {
            int u = ublk_ctrl_update_size(s->ctrl, id, (uint64_t)old >> 9);
            if (u == 0) {
                __atomic_store_n(&d->size, old, __ATOMIC_RELEASE);
            }
            error_propagate(errp, local);
            error_prepend(errp, "device %u: shrinking the image to %llu bytes failed; %s: ", id,
                          (unsigned long long)new_size,
                          u == 0 ? "the device has its old size again"
                                 : "the device stays at the new size (UPDATE_SIZE back failed)");
            return -1;
        }
    }
    rep->size = new_size;
    if (s->cfg->size) {
        s->cfg->size = new_size;   /* a device sized by --size (null) is that big now */
    }
    if (server_write_state(s, &local) < 0) {
        /* The resize happened: say so, with what could not be recorded. */
        ublk_log(LOG_WARNING, "resized to %llu bytes, but %s: recover would use the image's "
                 "size", (unsigned long long)new_size, error_get_pretty(local));
        error_free(local);
    }
    ublk_log(LOG_INFO, "%s resized from %lld to %llu bytes", s->bdev, (long long)old,
             (unsigned long long)new_size);
    return 0;
}

/* ---- quorum children (a control request, in a coroutine on the main thread) ---- */

static const char *const change_verbs[] = { [BDRV_CHILD_REPLACE] = "replaced",
                                            [BDRV_CHILD_ADD] = "added",
                                            [BDRV_CHILD_REMOVE] = "removed" };

/*
 * The configuration the state file keeps is rewritten first, to open the
 * new graph, and only then does the graph change: had it changed first, a
 * crash before the state was written would leave a `recover` reopening the
 * old graph, whose replaced child missed every write since and would vote
 * as if complete.  Recorded first, a crash before the change leaves a state
 * naming the new child marked children.N.rebuild=on (server_rebuild_check
 * clears it once complete): the recovered daemon rebuilds it from 0.  A
 * change that cannot be recorded is not made; one that fails after being
 * recorded is taken back out of the state.
 */
static int coroutine_fn server_quorum(Server *s, const UblkCtlRequest *req, UblkCtlReply *rep,
                                      Error **errp)
{
    uint32_t id = s->dev.dev_id;
    rep->old_size = rep->size = (uint64_t)__atomic_load_n(&s->dev.size, __ATOMIC_ACQUIRE);
    if (s->stopping) {
        error_setg_code(errp, ESHUTDOWN, "device %u is being removed", id);
        return -1;
    }
    char prefix[256];
    BlockDriverState *q = bdrv_find_child_changer(blk_bs(s->blk), prefix, sizeof(prefix));
    if (!q) {
        error_setg_code(errp, EOPNOTSUPP, "device %u has no quorum node: nothing in its graph "
                        "has children to replace, add or remove", id);
        return -1;
    }
    OptDict *opts = NULL;
    if (req->change != BDRV_CHILD_REMOVE) {
        Error *local = NULL;
        opts = !strncmp(req->options, "json:", 5) ? optdict_parse_json(req->options + 5, &local)
                                                  : optdict_parse(req->options, NULL, &local);
        if (!opts) {
            error_propagate(errp, local);
            error_prepend(errp, "device %u: the new child's options: ", id);
            return -1;
        }
    }
    /* An added child is numbered after the last (the driver refuses any
     * other number, after this records it: then it is taken back). */
    int index = req->change == BDRV_CHILD_ADD && req->index < 0 ? bdrv_numbered_children(q)
                                                                : req->index;
    UblkGraphSave saved;
    ublk_dev_config_graph_save(s->cfg, &saved);
    Error *local = NULL;
    if (ublk_dev_config_change_child(s->cfg, prefix, req->change, index, req->options,
                                     req->change != BDRV_CHILD_REMOVE, &local) < 0 ||
        server_write_state(s, &local) < 0) {
        ublk_dev_config_graph_restore(s->cfg, &saved);
        optdict_free(opts);
        error_propagate(errp, local);
        error_prepend(errp, "device %u: children.%d not %s: the state file could not record "
                      "it, and recover would open the old graph: ", id, index,
                      change_verbs[req->change]);
        return -1;
    }
    int ret = bdrv_change_child(q, req->change, index, opts, errp);
    if (ret < 0) {
        ublk_dev_config_graph_restore(s->cfg, &saved);
        if (server_write_state(s, &local) < 0) {
            ublk_log(LOG_WARNING, "%s: the state still names the refused change of children.%d"
                     " (%s): recover would open it", s->bdev, index, error_get_pretty(local));
            error_free(local);
        }
        error_prepend(errp, "device %u: ", id);
        return -1;
    }
    ublk_dev_config_graph_free(&saved);
    rep->index = index;
    if (req->change == BDRV_CHILD_REMOVE) {
        uint32_t m = s->rebuild_marked, low = (1u << index) - 1;
        s->rebuild_marked = (m & low) | ((m >> 1) & ~low);
    } else {
        s->rebuild_marked |= 1u << index;
    }
    snprintf(s->quorum_prefix, sizeof(s->quorum_prefix), "%s", prefix);
    ublk_log(LOG_INFO, "%s: quorum child children.%d %s%s%s", s->bdev, index,
             change_verbs[req->change], req->change == BDRV_CHILD_REMOVE ? "" : ": ",
             req->change == BDRV_CHILD_REMOVE ? "" : req->options);
    return 0;
}

/* ---- internal snapshot of the image (a control request, main thread coroutine) ---- */

/*
 * I/O is drained (requests in flight complete, new ones wait at the root
 * edge), the format takes the snapshot (metadata flushed, refcounts, the
 * table; qcow2-snapshot.c), and I/O resumes: the snapshot holds every write
 * completed before the drain and none after.  The pause is measured from
 * the drain's start to its end and returned.
 */
static int coroutine_fn server_snapshot(Server *s, const UblkCtlRequest *req, UblkCtlReply *rep,
                                        Error **errp)
{
    uint32_t id = s->dev.dev_id;
    rep->old_size = rep->size = (uint64_t)__atomic_load_n(&s->dev.size, __ATOMIC_ACQUIRE);
    if (s->stopping) {
        error_setg_code(errp, ESHUTDOWN, "device %u is being removed", id);
        return -1;
    }
    BlockDriverState *bs = blk_bs(s->blk);
    BdrvSnapshotInfo sn = { 0 };
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(sn.name, sizeof(sn.name), "%.255s", req->options);   /* the parser checked */
    sn.date_sec = (uint32_t)now.tv_sec;
    sn.date_nsec = (uint32_t)now.tv_nsec;
    int64_t t0 = server_now_ns();
    bdrv_drained_begin(bs);
    int ret = bdrv_co_snapshot_create(bs, &sn, errp);
    bdrv_drained_end(bs);
    rep->pause_ns = (uint64_t)(server_now_ns() - t0);
    if (ret < 0) {
        error_prepend(errp, "device %u: snapshot '%s' not taken: ", id, req->options);
        return -1;
    }
    snprintf(rep->snapshot_id, sizeof(rep->snapshot_id), "%s", sn.id_str[0] ? sn.id_str : "?");
    ublk_log(LOG_INFO, "%s: internal snapshot '%s' (id %s) taken; I/O paused %.3f ms", s->bdev,
             req->options, rep->snapshot_id, rep->pause_ns / 1e6);
    return 0;
}

/* Children marked for rebuild in the state that are complete now lose the
 * mark (from the stats timer, each second). */
static void server_rebuild_check(Server *s)
{
    if (!s->rebuild_marked || !s->blk) {
        return;
    }
    char prefix[256];
    BlockDriverState *q = bdrv_find_child_changer(blk_bs(s->blk), prefix, sizeof(prefix));
    uint32_t done = s->rebuild_marked & ~bdrv_incomplete_children(q);
    if (!done) {
        return;
    }
    for (int i = 0; i < 32; i++) {
        if (done & (1u << i)) {
            ublk_dev_config_clear_rebuild(s->cfg, prefix, i);
        }
    }
    s->rebuild_marked &= ~done;
    Error *local = NULL;
    if (server_write_state(s, &local) < 0) {
        ublk_log(LOG_WARNING, "a rebuilt quorum child is complete, but the state could not "
                 "record it (%s): recover would rebuild it again", error_get_pretty(local));
        error_free(local);
    }
}

static void coroutine_fn server_ctl(void *opaque, const UblkCtlRequest *req, UblkCtlReply *rep)
{
    Server *s = opaque;
    Error *err = NULL;
    int ret = -1;
    switch (req->op) {
    case UBLK_CTL_RESIZE:
        ret = server_resize(s, req->size, req->shrink, rep, &err);
        break;
    case UBLK_CTL_QUORUM:
        ret = server_quorum(s, req, rep, &err);
        break;
    case UBLK_CTL_SNAPSHOT:
        ret = server_snapshot(s, req, rep, &err);
        break;
    case UBLK_CTL_UPGRADE:
        /* Only a mark: the client sends QUIESCE_DEV, the kernel aborts our
         * FETCHes, and the queue threads end after the requests they hold;
         * serve_check_queues then sees why. */
        if (req->cancel) {
            s->upgrade_until = 0;
            ublk_log(LOG_INFO, "upgrade of %s cancelled: serving on", s->bdev);
            ret = 0;
        } else if (!(s->dev.flags & UBLK_F_QUIESCE)) {
            error_setg_errno(&err, EOPNOTSUPP, "device %u was added without UBLK_F_QUIESCE",
                             s->dev.dev_id);
        } else if (s->stopping) {
            error_setg_errno(&err, ESHUTDOWN, "device %u's daemon is stopping", s->dev.dev_id);
        } else {
            /* Bounded: a client that dies before QUIESCE_DEV (or before
             * "cancel") must not leave a later `del` keeping the device. */
            s->upgrade_until = server_now_ns() + 60 * 1000000000LL;
            ublk_log(LOG_INFO, "upgrade: waiting for QUIESCE_DEV to end the queues of %s",
                     s->bdev);
            ret = 0;
        }
        break;
    default:
        error_setg(&err, "unknown request %d", (int)req->op);
        break;
    }
    rep->ok = ret == 0;
    if (!rep->ok) {
        rep->err = error_get_errno(err);
        rep->message = strdup(err ? error_get_pretty(err) : "failed");
        ublk_log(LOG_WARNING, "%s", rep->message ? rep->message : "control request failed");
    }
    error_free(err);
}

/* The daemon serves one device, so the process-wide zero-copy counters are its. */
static void server_get_stats(Server *s, BlockAcctStats *st)
{
    blk_get_stats(s->blk, st);
    st->zc_bounced = bdrv_mapped_bounce_count();
    st->zc_ring_copies = iov_fixed_copy_count();
    st->zc_reg_fallbacks = ublk_zc_reg_fallback_count();
    ImageSpecificInfo c = { 0 };
    bdrv_get_counters(blk_bs(s->blk), &c);
    st->n_node_counters = 0;
    for (int i = 0; i < c.n && i < BLK_NODE_COUNTERS_MAX; i++) {
        snprintf(st->node_counters[i].key, sizeof(st->node_counters[i].key), "%s",
                 c.entries[i].key);
        st->node_counters[i].value = strtoull(c.entries[i].value, NULL, 10);
        st->n_node_counters++;
    }
    image_info_free(&c);
    bdrv_event_totals(&st->events, &st->events_suppressed);
}

/* Returns the id of a device that stays in the kernel (DEL_DEV refused), or -1.
 * A handover (upgrade) keeps the device and its state file: the queues end,
 * the image is flushed and closed (its locks go), and closing the char
 * device turns the device QUIESCED for the next daemon's recovery. */
static int server_stop(Server *s)
{
    UblkDev *d = &s->dev;
    int left = -1;
    ublk_ctl_server_free(s->ctl);   /* before the device goes: no resize then */
    s->ctl = NULL;
    if (s->handover) {
        s->added = s->started = false;
    }
    if (s->started) {
        int ret = ublk_ctrl_stop_dev(s->ctrl, d->dev_id);
        if (ret < 0) {
            ublk_log(LOG_WARNING, "STOP_DEV of device %u failed: %s", d->dev_id, strerror(-ret));
        }
    }
    ublk_queues_stop(d);
    if (d->cdev_fd >= 0) {
        close(d->cdev_fd);
        d->cdev_fd = -1;
    }
    if (s->blk) {
        BlockAcctStats st;
        server_get_stats(s, &st);
        if (s->started) {
            ublk_stats_write(d->dev_id, &st);
        }
        blk_unref(s->blk);       /* drain, flush, close */
        s->blk = NULL;
    }
    if (s->added || s->started) {
        int ret = ublk_ctrl_del_dev(s->ctrl, d->dev_id);
        if (ret < 0) {
            ublk_log(LOG_WARNING, "DEL_DEV of device %u failed: %s; it stays in the kernel "
                     "until 'ublkd del -n %u' (as root if it was added unprivileged and its "
                     "char device never became ours)", d->dev_id, strerror(-ret), d->dev_id);
            left = (int)d->dev_id;
        } else {
            /* Only once the device is gone: recover and list need the state
             * of a device that stays in the kernel. */
            ublk_state_remove(d->dev_id);
        }
    }
    ublk_ctrl_close(s->ctrl);
    s->ctrl = NULL;
    return left;
}

/* ---- serving: the main thread's loop ---- */

/*
 * While the device is up the main thread runs its AioContext like any
 * other thread: signals arrive through a signalfd watched on its ring, the
 * statistics file is written from a timer, and background work of the
 * graph (coroutines and timers on a node's home context, which is this
 * one) runs in between.
 */
#define STATS_INTERVAL_NS 1000000000LL

typedef struct ServeLoop {
    Server *s;
    AioTimer stats_timer;
    bool stop;
} ServeLoop;

/* A queue thread ends on its own only when the kernel took the device away
 * (it says so with SIGUSR2); the timer looks too, in case that got lost. */
static void serve_check_queues(ServeLoop *l)
{
    if (!l->stop && ublk_queues_running(&l->s->dev) < l->s->dev.nr_threads) {
        if (server_upgrading(l->s)) {
            /* Every queue ends: QUIESCE_DEV aborted all FETCHes. */
            ublk_log(LOG_INFO, "upgrade: %s quiesced; handing it over", l->s->bdev);
            l->s->handover = true;
        } else {
            ublk_log(LOG_WARNING, "a queue of %s ended: the device was stopped or deleted "
                     "outside ublkd; exiting", l->s->bdev);
        }
        l->stop = true;
    }
}

static void serve_signal(void *opaque, const struct signalfd_siginfo *si)
{
    ServeLoop *l = opaque;
    int sig = (int)si->ssi_signo;
    if (sig == SIGTERM && server_upgrading(l->s) && !l->stop) {
        /* From `upgrade` once QUIESCE_DEV succeeded: a queue whose every tag
         * is busy when the FETCHes are aborted does not end by itself. */
        ublk_log(LOG_INFO, "upgrade: %s quiesced; handing it over", l->s->bdev);
        l->s->handover = true;
        l->stop = true;
    } else if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
        if (!l->stop) {
            ublk_log(LOG_INFO, "signal %d: stopping %s", sig, l->s->bdev);
        }
        l->stop = true;
    } else {
        serve_check_queues(l);
    }
}

/* Block-layer events (a quorum child outvoted, ...) as log lines whose text
 * after "event " is one JSON object. */
static void server_event_line(const char *json_line, void *opaque)
{
    (void)opaque;
    ublk_log(LOG_WARNING, "event %s", json_line);
}

static void serve_stats(void *opaque)
{
    ServeLoop *l = opaque;
    bdrv_event_flush();          /* a flood that ended reports its count */
    BlockAcctStats st;
    server_get_stats(l->s, &st);
    ublk_stats_write(l->s->dev.dev_id, &st);
    server_rebuild_check(l->s);
    serve_check_queues(l);
    aio_timer_mod(&l->stats_timer, aio_now_ns(l->stats_timer.ctx) + STATS_INTERVAL_NS);
}

static void serve(Server *s, const sigset_t *set)
{
    AioContext *ctx = aio_current();
    ServeLoop l = { .s = s };
    Error *err = NULL;
    AioSignalWatch *w = aio_signal_watch_new(ctx, set, serve_signal, &l, &err);
    if (!w) {
        ublk_log(LOG_ERR, "%s: stopping %s", error_get_pretty(err), s->bdev);
        error_free(err);
        return;
    }
    aio_timer_init(&l.stats_timer, ctx, serve_stats, &l);
    serve_stats(&l);             /* the first one now, as `list` may look at once */
    /* A control request in progress (a resize) ends before the device
     * stops: it may have changed the kernel's size and not the image's yet. */
    while (!l.stop || ublk_ctl_server_busy(s->ctl)) {
        aio_poll(ctx, true);
        s->stopping = l.stop;
    }
    aio_timer_del(&l.stats_timer);
    aio_signal_watch_free(w);
}

int ublk_server_run(UblkDevConfig *cfg, bool recover, int ready_fd)
{
    Server s = { .cfg = cfg };
    Error *err = NULL;
    s.dev.cdev_fd = -1;

    /* Signals are taken by this thread's loop (a signalfd, see serve());
     * the queue threads inherit the mask and never see them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    ublk_log_open(cfg, cfg->dev_id);
    bdrv_set_event_sink(server_event_line, NULL);
    if (server_start(&s, recover, ready_fd, &err) < 0) {
        /* Unwind first, so that the verdict can say what could not be. */
        int left = server_stop(&s);
        if (left >= 0) {
            char *msg = NULL;
            /* Root's DEL_DEV fails for other reasons than node access: the
             * log has its errno (server_stop). */
            const char *why = geteuid() == 0
                ? "DEL_DEV failed (the log says why), delete it later"
                : "its char device never became yours, so only root can delete it";
            if (asprintf(&msg, "%s; device %d stays in the kernel: %s (ublkd del -n %d)",
                         error_get_pretty(err), left, why, left) > 0) {
                error_free(err);
                err = NULL;
                error_setg(&err, "%s", msg);
                free(msg);
            }
        }
        const char *msg = error_get_pretty(err);
        ublk_log(LOG_ERR, "%s", msg);
        report(&ready_fd, "ERR", msg);
        error_free(err);
        return 1;
    }
    ublk_log(LOG_INFO, "%s %s: %u queue(s), depth %u, %u thread(s)%s, pid %d",
             recover ? "recovered" : "started", s.bdev, s.dev.nr_queues, s.dev.depth,
             s.dev.nr_threads, s.dev.per_io_threads ? " sharing all tags (PER_IO_DAEMON)" : "",
             (int)getpid());
    report(&ready_fd, "OK", s.bdev);
    if (cfg->foreground) {
        printf("%s\n", s.bdev);
        fflush(stdout);
    }

    serve(&s, &set);
    bool handover = s.handover;
    server_stop(&s);
    ublk_log(LOG_INFO, handover ? "device %u handed over (QUIESCED)" : "device %u removed",
             s.dev.dev_id);
    return 0;
}
