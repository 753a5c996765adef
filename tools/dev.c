/*
 * dev.c - the device verbs of `ublkd`: add, del, list, recover, resize,
 * features.
 *
 * `add` and `recover` fork a daemon (ublk/server.c) and wait on a pipe until
 * it says the block device is usable ("OK /dev/ublkbN") or why it is not
 * ("ERR ..."), so the command's exit status is trustworthy for scripts.
 * `del` asks the daemon to stop (SIGTERM) and waits for it; a device whose
 * daemon is gone (killed, crashed) is stopped and deleted directly.  Only a
 * process proven to be the device's daemon is signalled (daemon_pidfd): a
 * dead daemon's pid may belong to anyone by now.
 * `list` merges what the kernel knows (GET_DEV_INFO) with the daemons'
 * state and counter files.
 * `resize` asks the device's daemon, which owns the image, through its
 * control socket (ublk/ctlsock.c): the daemon resizes the image and the
 * kernel's device and answers with what it did.
 */
#include <dirent.h>
#include <sched.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "options.h"
#include "tools.h"
#include "ublk.h"

static int sys_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int sys_pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* major:minor of /sys/.../dev; false if the device has none (not started). */
static bool sysfs_devt(const char *path, dev_t *devt)
{
    char buf[64];
    unsigned maj, min;
    FILE *f = fopen(path, "r");
    bool ok = f && fgets(buf, sizeof(buf), f) && sscanf(buf, "%u:%u", &maj, &min) == 2;
    if (f) {
        fclose(f);
    }
    if (ok) {
        *devt = makedev(maj, min);
    }
    return ok;
}

/* Whether process pid has /dev/ublkcID open: the kernel lets one process at
 * a time open a ublk char device, and only a daemon serving it does. */
/* Whether process pid has a device node of type (S_IFCHR/S_IFBLK) and
 * number devt open (false where its fds cannot be read). */
static bool proc_has_dev_open(pid_t pid, mode_t type, dev_t devt)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);   /* others' are unreadable unless root */
    struct dirent *de;
    bool found = false;
    while (dir && !found && (de = readdir(dir))) {
        struct stat st;
        found = de->d_name[0] != '.' && fstatat(dirfd(dir), de->d_name, &st, 0) == 0 &&
                (st.st_mode & S_IFMT) == type && st.st_rdev == devt;
    }
    if (dir) {
        closedir(dir);
    }
    return found;
}

static bool holds_cdev(pid_t pid, uint32_t id)
{
    char path[PATH_MAX];
    dev_t cdev;
    snprintf(path, sizeof(path), "/sys/class/ublk-char/ublkc%u/dev", id);
    return sysfs_devt(path, &cdev) && proc_has_dev_open(pid, S_IFCHR, cdev);
}

/*
 * A pidfd for the daemon of device id, if pid is that daemon; else -1.
 * A pid alone proves nothing: after a daemon dies its pid (kept by the
 * kernel as ublksrv_pid and in the state file) may be any process's.  The
 * proof is that the process holds the device's char device open, or that
 * its start time is the one its state file recorded (st, may be NULL).
 * The pidfd is taken first, so the process proven is the one it names: a
 * pid reused after the check is never signalled (pidfd_send_signal then
 * fails with ESRCH).
 */
static int daemon_pidfd(uint32_t id, pid_t pid, const UblkDevState *st)
{
    if (pid <= 0) {
        return -1;
    }
    int pidfd = sys_pidfd_open(pid);
    if (pidfd < 0) {
        return -1;
    }
    uint64_t started = ublk_proc_start_time(pid);
    bool proven = started && ((st && st->pid == pid && st->start_time == started) ||
                              holds_cdev(pid, id));
    if (!proven) {
        close(pidfd);
        return -1;
    }
    return pidfd;
}

/* Whether the process behind pidfd has exited (zombies included). */
static bool pidfd_exited(int pidfd, int timeout_ms)
{
    struct pollfd p = { .fd = pidfd, .events = POLLIN };
    return poll(&p, 1, timeout_ms) > 0;
}

/* Whether device id has a live daemon (see daemon_pidfd). */
static bool daemon_alive(uint32_t id, pid_t pid, const UblkDevState *st)
{
    int pidfd = daemon_pidfd(id, pid, st);
    bool alive = pidfd >= 0 && !pidfd_exited(pidfd, 0);
    if (pidfd >= 0) {
        close(pidfd);
    }
    return alive;
}

/* An absolute form of a relative path (the file itself may not exist yet). */
static char *absolute_path(const char *p)
{
    char *r = realpath(p, NULL), cwd[PATH_MAX];
    if (!r && getcwd(cwd, sizeof(cwd)) && asprintf(&r, "%s/%s", cwd, p) < 0) {
        r = NULL;
    }
    return r;
}

/* The "filename" keys of an options string, at any depth, made absolute
 * (*s replaced if any was relative). */
static int absolutize_options(char **s, Error **errp)
{
    bool is_json = !strncmp(*s, "json:", 5);
    OptDict *d = is_json ? optdict_parse_json(*s + 5, errp) : optdict_parse(*s, NULL, errp);
    if (!d) {
        return -1;
    }
    bool changed = false;
    for (size_t i = 0; i < optdict_count(d); i++) {
        const char *k = optdict_key_at(d, i), *v = optdict_value_at(d, i);
        size_t kl = strlen(k);
        bool is_filename = kl >= 8 && !strcmp(k + kl - 8, "filename") &&
                           (kl == 8 || k[kl - 9] == '.');
        /* A protocol name ("null-co://", "nbd://...") is no path. */
        if (is_filename && v[0] && v[0] != '/' && !strstr(v, "://")) {
            char *abs = absolute_path(v);
            if (abs) {
                optdict_set(d, k, abs);   /* replaces the value in place */
                changed = true;
            }
            free(abs);
        }
    }
    if (changed) {
        free(*s);
        *s = optdict_to_string(d);
    }
    optdict_free(d);
    return 0;
}

/* --blockdev's "filename" keys, at any depth, made absolute. */
static int absolutize_blockdev(UblkDevConfig *c, Error **errp)
{
    if (absolutize_options(&c->blockdev, errp) < 0) {
        error_prepend(errp, "--blockdev: ");
        return -1;
    }
    return 0;
}

/* An --object's dir= and file= made absolute (*def replaced if one was
 * relative); a definition that does not parse is left to the check. */
static void absolutize_object(char **def)
{
    OptDict *d = optdict_parse(*def, "qom-type", NULL);
    bool changed = false;
    for (size_t i = 0; d && i < optdict_count(d); i++) {
        const char *k = optdict_key_at(d, i), *v = optdict_value_at(d, i);
        if ((!strcmp(k, "dir") || !strcmp(k, "file")) && v[0] && v[0] != '/') {
            char *abs = absolute_path(v);
            if (abs) {
                optdict_set(d, k, abs);
                changed = true;
            }
            free(abs);
        }
    }
    if (changed) {
        free(*def);
        *def = optdict_to_string(d);
    }
    optdict_free(d);
}

/* Files become absolute so that `recover` works from any directory. */
static void absolutize(UblkDevConfig *c)
{
    for (int i = 0; i < c->nobjects; i++) {
        absolutize_object(&c->objects[i]);
    }
    for (int i = 0; i < c->nfiles; i++) {
        if (bdrv_is_protocol_filename(c->files[i])) {
            continue;     /* a local "rbd:x" file must not turn it into a path */
        }
        char *r = realpath(c->files[i], NULL);
        if (r) {
            free(c->files[i]);
            c->files[i] = r;
        }
    }
    if (c->key_file && c->key_file[0] != '/') {
        char *r = realpath(c->key_file, NULL);
        if (r) {
            free(c->key_file);
            c->key_file = r;
        }
    }
    if (c->log_file && c->log_file[0] != '/') {
        char cwd[PATH_MAX], *abs;
        if (getcwd(cwd, sizeof(cwd)) && asprintf(&abs, "%s/%s", cwd, c->log_file) > 0) {
            free(c->log_file);
            c->log_file = abs;
        }
    }
}

/* Fork the daemon and wait for its verdict. */
static int spawn_daemon(UblkDevConfig *cfg, bool recover)
{
    if (cfg->foreground) {
        return ublk_server_run(cfg, recover, -1);
    }
    const char *verb = recover ? "recover" : "add";
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        error_report("%s: cannot create the pipe to the device daemon: %s", verb,
                     strerror(errno));
        return 1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        error_report("%s: cannot fork the device daemon: %s", verb, strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return 1;
    }
    if (pid == 0) {
        close(pfd[0]);
        setsid();
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            if (!cfg->log_file) {
                dup2(nul, 2);
            } else {
                /* Not through a symlink: a root daemon must not append to
                 * whatever another user points the name at. */
                int lf = open(cfg->log_file,
                              O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
                dup2(lf >= 0 ? lf : nul, 2);
                if (lf > 2) {
                    close(lf);
                }
            }
            if (nul > 2) {
                close(nul);
            }
        }
        _exit(ublk_server_run(cfg, recover, pfd[1]));
    }
    close(pfd[1]);
    char buf[2048];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(buf) - 1 && (r = read(pfd[0], buf + n, sizeof(buf) - 1 - n)) != 0) {
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        n += r;
    }
    close(pfd[0]);
    buf[n] = 0;
    /* "WARN <message>" lines may come before the verdict; the verdict is
     * the rest, lines and all (a lock conflict's hint is a second line). */
    char *line = buf, *nl;
    while (!strncmp(line, "WARN ", 5) && (nl = strchr(line, '\n'))) {
        *nl = 0;
        warn_report("%s", line + 5);
        line = nl + 1;
    }
    size_t len = strlen(line);
    while (len && line[len - 1] == '\n') {
        line[--len] = 0;
    }
    if (!strncmp(line, "OK ", 3)) {
        printf("%s\n", line + 3);
        return 0;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!strncmp(line, "ERR ", 4)) {
        error_report("%s", line + 4);
    } else if (WIFSIGNALED(status)) {
        error_report("%s: the device daemon died of signal %d before the device was ready "
                     "(its log: %s)", verb, WTERMSIG(status),
                     cfg->log_file ? cfg->log_file : "syslog, ident ublkd");
    } else {
        error_report("%s: the device daemon exited (status %d) before the device was ready "
                     "(its log: %s)", verb, WEXITSTATUS(status),
                     cfg->log_file ? cfg->log_file : "syslog, ident ublkd");
    }
    return 1;
}

static int cmd_add(int argc, char **argv)
{
    UblkDevConfig cfg;
    Error *err = NULL;
    ublk_dev_config_init(&cfg);
    int ret = ublk_dev_config_parse(&cfg, argc, argv, &err);
    if (ret != 0) {
        if (ret < 0) {
            error_report_err(err);
        }
        ublk_dev_config_free(&cfg);
        return ret < 0 ? 2 : 0;
    }
    if (cfg.type && !bdrv_find_format(cfg.type)) {
        error_report("unknown device type '%s' (no such block driver in this build)", cfg.type);
        ublk_dev_config_free(&cfg);
        return 2;
    }
    for (int i = 0; i < cfg.nfiles; i++) {
        /* "rbd:pool/img" is no path: its driver says whether it is there. */
        if (!bdrv_is_protocol_filename(cfg.files[i]) && access(cfg.files[i], F_OK) < 0) {
            error_report("%s: %s", cfg.files[i], strerror(errno));
            ublk_dev_config_free(&cfg);
            return 1;
        }
    }
    /* Refused before the kernel makes a device the daemon could not record. */
    int run_fd = ublk_run_dir_open(true, &err);
    if (run_fd < 0) {
        error_prepend(&err, "add: ");
        error_report_err(err);
        ublk_dev_config_free(&cfg);
        return 1;
    }
    close(run_fd);
    if (cfg.dev_id >= 0) {
        UblkDevState old;
        if (ublk_state_read(cfg.dev_id, &old, NULL) == 0) {
            bool alive = daemon_alive(cfg.dev_id, old.pid, &old);
            ublk_dev_state_free(&old);
            if (alive) {
                error_report("device id %d is already in use", cfg.dev_id);
                ublk_dev_config_free(&cfg);
                return 1;
            }
        }
    }
    absolutize(&cfg);
    if (cfg.blockdev && absolutize_blockdev(&cfg, &err) < 0) {
        error_report_err(err);
        ublk_dev_config_free(&cfg);
        return 2;
    }
    if (ublk_dev_config_check_log(&cfg, &err) < 0) {
        error_report_err(err);
        ublk_dev_config_free(&cfg);
        return 2;
    }
    ret = spawn_daemon(&cfg, false);
    ublk_dev_config_free(&cfg);
    return ret;
}

static int parse_id(const char *s, uint32_t *id)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v >= (1UL << 20)) {
        error_report("invalid device id '%s'", s);
        return -1;
    }
    *id = v;
    return 0;
}

/*
 * getopt_long for the verbs that name a device with -n ID (del, list,
 * recover).  -n is taken here, and a bad id, an unknown option or a missing
 * value reported here, so that the verbs agree on them; each comes back as
 * '?', on which the verb exits with 2.  Argv[0] is the verb; optstring
 * starts with ':'.
 */
static int verb_getopt(int argc, char **argv, const char *optstring, const struct option *lo,
                       uint32_t *id, bool *have_id)
{
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, optstring, lo, NULL)) == 'n') {
        if (parse_id(optarg, id) < 0) {
            return '?';
        }
        *have_id = true;
    }
    if (opt == '?' || opt == ':') {
        Error *err = NULL;
        ublk_getopt_error(opt, argv, &err);
        error_report("%s: %s (try 'ublkd %s --help')", argv[0], error_get_pretty(err), argv[0]);
        error_free(err);
        return '?';
    }
    return opt;
}

static int cmd_recover(int argc, char **argv)
{
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "reissue", no_argument, NULL, 'r' },
        { "foreground", no_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false, reissue = false, fg = false;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:rfh", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case 'r': reissue = true; break;
        case 'f': fg = true; break;
        case 'h':
            printf("usage: ublkd recover -n ID [--reissue] [--foreground]\n"
                   "Start a new daemon for a device whose daemon died (state QUIESCED).\n"
                   "--reissue insists that requests in flight at the crash are replayed\n"
                   "(the device must have been added with --recovery=reissue, the default).\n");
            return 0;
        default:
            return 2;
        }
    }
    if (!have_id) {
        error_report("recover: -n ID is required");
        return 2;
    }
    UblkDevState st;
    Error *err = NULL;
    if (ublk_state_read(id, &st, &err) < 0) {
        error_prepend(&err, "recover: ");
        error_report_err(err);
        return 1;
    }
    if (daemon_alive(id, st.pid, &st)) {
        error_report("recover: device %u is still served by pid %d", id, (int)st.pid);
        ublk_dev_state_free(&st);
        return 1;
    }
    /* Say why a device cannot be recovered before a daemon tries (its
     * START_USER_RECOVERY would only give an errno). */
    if (!(st.flags & UBLK_F_USER_RECOVERY)) {
        error_report("recover: device %u was added with --recovery=none: the kernel removes "
                     "such a device when its daemon dies; add it again", id);
        ublk_dev_state_free(&st);
        return 1;
    }
    UblkCtrl *ctrl = ublk_ctrl_open(NULL);
    struct ublksrv_ctrl_dev_info info;
    int kret = ctrl ? ublk_ctrl_get_info(ctrl, id, &info) : 0;
    ublk_ctrl_close(ctrl);
    const char *why = NULL;
    char buf[256];
    if (kret == -ENODEV) {
        why = "the kernel no longer has it (deleted, or it did not survive); add it again";
    } else if (kret == -EACCES || kret == -EPERM) {
        snprintf(buf, sizeof(buf), "%s: an unprivileged device can be recovered only by the "
                 "user who added it (whose char device /dev/ublkc%u must be theirs) or root",
                 strerror(-kret), id);
        why = buf;
    } else if (kret == 0 && info.state == UBLK_S_DEV_DEAD) {
        why = "the kernel has it stopped (DEAD), not waiting for a new daemon; del and add it";
    } else if (kret == 0 && (info.flags & UBLK_F_UNPRIVILEGED_DEV) && geteuid() != 0 &&
               info.owner_uid != geteuid()) {
        snprintf(buf, sizeof(buf), "it is an unprivileged device of uid %u; only that user or "
                 "root can recover it", info.owner_uid);
        why = buf;
    }
    if (why) {
        error_report("recover: device %u cannot be recovered: %s", id, why);
        ublk_dev_state_free(&st);
        return 1;
    }
    if (reissue && !(st.flags & UBLK_F_USER_RECOVERY_REISSUE)) {
        error_report("recover: device %u was added without USER_RECOVERY_REISSUE "
                     "(its in-flight requests were failed, not kept)", id);
        ublk_dev_state_free(&st);
        return 1;
    }
    st.cfg.dev_id = id;
    st.cfg.foreground = fg;
    int ret = spawn_daemon(&st.cfg, true);
    ublk_dev_state_free(&st);
    return ret;
}

static void resize_usage(FILE *f)
{
    fprintf(f,
        "usage: ublkd resize -n ID [--shrink] SIZE\n"
        "Grow (or with --shrink, shrink) device ID and its image to SIZE bytes while it\n"
        "is in use (suffixes k, M, G, T; +SIZE grows by SIZE).  The device's daemon\n"
        "resizes the image, then the kernel's device (growing; the other way round\n"
        "shrinking, after the requests in flight).  Grow the file system after it\n"
        "(resize2fs, xfs_growfs); shrink a file system before the device.\n"
        "SIZE must be a multiple of the device's logical block size.  Needs a kernel\n"
        "with UBLK_F_UPDATE_SIZE (Linux 6.14+) and an image format that can resize\n"
        "(raw, qcow2; not vdi yet).  A qcow2 shrink over data is refused.\n"
        "  -n, --id ID    the device\n"
        "  --shrink       allow a size below the current one (the data past it is lost)\n");
}

static int cmd_resize(int argc, char **argv)
{
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "shrink", no_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false, shrink = false;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:h", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case 's': shrink = true; break;
        case 'h':
            resize_usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (!have_id) {
        error_report("resize: -n ID is required (try 'ublkd resize --help')");
        return 2;
    }
    if (optind != argc - 1) {
        error_report("resize: %s (try 'ublkd resize --help')",
                     optind >= argc ? "SIZE is required" : "one SIZE only");
        return 2;
    }
    const char *arg = argv[optind];
    bool relative = arg[0] == '+';
    uint64_t size;
    int pr = parse_size(arg + relative, &size);
    if (pr < 0 || (relative && !size)) {
        error_report("resize: invalid size '%s'%s", arg,
                     pr == -ERANGE ? " (too large)" : " (a number of bytes, with an optional "
                     "suffix k, M, G, T; or +SIZE)");
        return 2;
    }
    UblkDevState st;
    Error *err = NULL;
    int sr = ublk_state_read(id, &st, &err);
    if (sr < 0) {
        /* Say whether the kernel has it at all: "no such device" and
         * "not one of your ublkd devices" need different actions. */
        UblkCtrl *ctrl = ublk_ctrl_open(NULL);
        struct ublksrv_ctrl_dev_info info;
        int kret = ctrl ? ublk_ctrl_get_info(ctrl, id, &info) : -ENODEV;
        ublk_ctrl_close(ctrl);
        if (sr == -1 && kret == -ENODEV) {
            error_report("resize: no device %u", id);
        } else {
            error_prepend(&err, "resize: device %u: ", id);
            error_report_err(err);
            err = NULL;
        }
        error_free(err);
        return 1;
    }
    int ret = 1;
    if (!daemon_alive(id, st.pid, &st)) {
        error_report("resize: device %u's daemon (pid %d) is not running%s", id, (int)st.pid,
                     (st.flags & UBLK_F_USER_RECOVERY) ? "; 'ublkd recover -n ID' first" : "");
        goto out;
    }
    UblkCtlRequest req = { .op = UBLK_CTL_RESIZE, .size = size, .shrink = shrink };
    if (relative) {
        /* From the size the daemon recorded last; it checks again. */
        if (st.size <= 0) {
            error_report("resize: device %u's state records no size (a daemon from an older "
                         "ublkd): give SIZE without '+'", id);
            goto out;
        }
        if (size > (uint64_t)INT64_MAX - (uint64_t)st.size) {
            error_report("resize: invalid size '%s' (too large)", arg);
            goto out;
        }
        req.size = (uint64_t)st.size + size;
    }
    UblkCtlReply rep;
    /* Generous: a resize may wait for requests in flight and a truncate. */
    if (ublk_ctl_call(id, st.pid, &req, &rep, 120000, &err) < 0) {
        error_prepend(&err, "resize: ");
        error_report_err(err);
        goto out;
    }
    if (!rep.ok) {
        error_report("resize: %s", rep.message);
    } else if (rep.size == rep.old_size) {
        printf("%s: already %llu bytes\n", st.bdev ? st.bdev : "device",
               (unsigned long long)rep.size);
        ret = 0;
    } else {
        printf("%s: %llu bytes (was %llu)\n", st.bdev ? st.bdev : "device",
               (unsigned long long)rep.size, (unsigned long long)rep.old_size);
        ret = 0;
    }
    ublk_ctl_reply_free(&rep);
out:
    ublk_dev_state_free(&st);
    return ret;
}

static void snapshot_usage(FILE *f)
{
    fprintf(f,
        "usage: ublkd snapshot -n ID -c NAME\n"
        "Take an internal snapshot NAME of device ID's image (qcow2) while it is in use:\n"
        "the daemon drains the requests in flight, holds new ones, takes the snapshot\n"
        "and serves on; the snapshot holds every write completed before it.  Prints the\n"
        "snapshot's id and how long I/O was held.  List, read or delete snapshots with\n"
        "'ublkd img snapshot' / 'ublkd img convert -l' (reading works while mapped with\n"
        "-U), or map one read-only with 'ublkd add qcow2 IMAGE --snapshot NAME'.\n"
        "  -n, --id ID        the device\n"
        "  -c, --create NAME  the snapshot's name (at most 255 bytes)\n");
}

static int cmd_snapshot(int argc, char **argv)
{
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "create", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false;
    const char *name = NULL;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:c:h", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case 'c': name = optarg; break;
        case 'h':
            snapshot_usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (!have_id || !name || optind != argc) {
        error_report("snapshot: %s (try 'ublkd snapshot --help')",
                     !have_id ? "-n ID is required" : !name ? "-c NAME is required"
                                                            : "no other arguments");
        return 2;
    }
    if (strlen(name) > 255) {
        error_report("snapshot: the name is %zu bytes: at most 255", strlen(name));
        return 2;
    }
    UblkDevState st;
    Error *err = NULL;
    if (ublk_state_read(id, &st, &err) < 0) {
        error_prepend(&err, "snapshot: device %u: ", id);
        error_report_err(err);
        return 1;
    }
    int ret = 1;
    if (!daemon_alive(id, st.pid, &st)) {
        error_report("snapshot: device %u's daemon (pid %d) is not running", id, (int)st.pid);
        goto out;
    }
    UblkCtlRequest req = { .op = UBLK_CTL_SNAPSHOT };
    snprintf(req.options, sizeof(req.options), "%s", name);
    UblkCtlReply rep;
    if (ublk_ctl_call(id, st.pid, &req, &rep, 120000, &err) < 0) {
        error_prepend(&err, "snapshot: ");
        error_report_err(err);
        goto out;
    }
    if (!rep.ok) {
        error_report("snapshot: %s", rep.message);
    } else {
        printf("%s: snapshot '%s' taken (id %s); I/O paused %.3f ms\n",
               st.bdev ? st.bdev : "device", name, rep.snapshot_id, rep.pause_ns / 1e6);
        ret = 0;
    }
    ublk_ctl_reply_free(&rep);
out:
    ublk_dev_state_free(&st);
    return ret;
}

static void upgrade_usage(FILE *f)
{
    fprintf(f,
        "usage: ublkd upgrade -n ID [--binary PATH]\n"
        "Replace the daemon of live device ID with a new one running PATH (default: this\n"
        "ublkd binary), keeping the device and its I/O: the kernel holds new requests\n"
        "while the old daemon finishes those it has, flushes the image and exits; the\n"
        "new daemon takes over the device as 'ublkd recover' does, with the same options.\n"
        "The device must have been added with recovery (--recovery=reissue, the default\n"
        "for root, or fail).  With a kernel lacking UBLK_F_QUIESCE, or a device added\n"
        "without it, the old daemon is killed instead and the requests it held are\n"
        "reissued (--recovery=reissue only).  PATH must be a regular executable owned by\n"
        "root or you and writable by no one else.\n"
        "  -n, --id ID        the device\n"
        "  --binary PATH      the ublkd binary of the new daemon\n");
}

/* Wait (up to timeout_ms) for the kernel to report device id in state want. */
static bool wait_dev_state(uint32_t id, uint16_t want, int timeout_ms, uint16_t *last)
{
    UblkCtrl *ctrl = ublk_ctrl_open(NULL);
    bool ok = false;
    for (int waited = 0; ctrl; waited += 50) {
        struct ublksrv_ctrl_dev_info info;
        if (ublk_ctrl_get_info(ctrl, id, &info) == 0) {
            *last = info.state;
            if (info.state == want) {
                ok = true;
                break;
            }
        }
        if (waited >= timeout_ms) {
            break;
        }
        usleep(50000);
    }
    ublk_ctrl_close(ctrl);
    return ok;
}

static const char *dev_state_name(uint16_t st)
{
    switch (st) {
    case UBLK_S_DEV_DEAD: return "DEAD";
    case UBLK_S_DEV_LIVE: return "LIVE";
    case UBLK_S_DEV_QUIESCED: return "QUIESCED";
    case UBLK_S_DEV_FAIL_IO: return "FAIL_IO";
    default: return "unknown";
    }
}

static int cmd_upgrade(int argc, char **argv)
{
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "binary", required_argument, NULL, 'b' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false;
    const char *binary = NULL;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:h", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case 'b': binary = optarg; break;
        case 'h':
            upgrade_usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (!have_id) {
        error_report("upgrade: -n ID is required (try 'ublkd upgrade --help')");
        return 2;
    }
    if (optind != argc) {
        error_report("upgrade: unexpected argument '%s' (try 'ublkd upgrade --help')",
                     argv[optind]);
        return 2;
    }
    /* Opened now and exec'ed through the descriptor: the file checked is
     * the file run, whatever happens to its name meanwhile. */
    const char *bin_name = binary ? binary : "/proc/self/exe";
    int bfd = open(bin_name, O_RDONLY | O_CLOEXEC);
    Error *err = NULL;
    if (bfd < 0) {
        error_report("upgrade: --binary %s: %s", bin_name, strerror(errno));
        return 1;
    }
    if (ublk_exec_check(bfd, bin_name, geteuid(), &err) < 0) {
        error_prepend(&err, "upgrade: --binary: ");
        error_report_err(err);
        close(bfd);
        return 1;
    }
    UblkDevState st;
    if (ublk_state_read(id, &st, &err) < 0) {
        error_prepend(&err, "upgrade: device %u: ", id);
        error_report_err(err);
        close(bfd);
        return 1;
    }
    int ret = 1, pidfd = -1;
    UblkCtrl *ctrl = NULL;
    if (!(st.flags & UBLK_F_USER_RECOVERY)) {
        error_report("upgrade: device %u was added with --recovery=none: the kernel would "
                     "remove it with its daemon; upgrade needs --recovery=reissue (del and add "
                     "it again)", id);
        goto out;
    }
    pidfd = daemon_pidfd(id, st.pid, &st);
    if (pidfd < 0 || pidfd_exited(pidfd, 0)) {
        error_report("upgrade: device %u's daemon (pid %d) is not running; 'ublkd recover -n "
                     "%u' starts one", id, (int)st.pid, id);
        goto out;
    }
    ctrl = ublk_ctrl_open(&err);
    if (!ctrl) {
        error_prepend(&err, "upgrade: ");
        error_report_err(err);
        goto out;
    }
    struct ublksrv_ctrl_dev_info info;
    uint64_t features = 0;
    int kret = ublk_ctrl_get_info(ctrl, id, &info);
    if (kret < 0) {
        error_report("upgrade: device %u: GET_DEV_INFO: %s", id, strerror(-kret));
        goto out;
    }
    if (info.state != UBLK_S_DEV_LIVE) {
        error_report("upgrade: device %u is %s, not LIVE", id, dev_state_name(info.state));
        goto out;
    }
    bool probed;
    ublk_ctrl_get_features(ctrl, &features, &probed);
    bool reissue = false;
    if (info.flags & UBLK_F_QUIESCE) {
        UblkCtlRequest req = { .op = UBLK_CTL_UPGRADE };
        UblkCtlReply rep;
        if (ublk_ctl_call(id, st.pid, &req, &rep, 10000, &err) < 0) {
            error_prepend(&err, "upgrade: ");
            error_report_err(err);
            goto out;
        }
        if (!rep.ok) {
            error_report("upgrade: device %u's daemon (pid %d) refused: %s", id, (int)st.pid,
                         rep.message);
            ublk_ctl_reply_free(&rep);
            goto out;
        }
        ublk_ctl_reply_free(&rep);
        /* The requests the daemon holds finish; new ones wait in the kernel. */
        kret = ublk_ctrl_quiesce(ctrl, id, 30000);
        if (kret < 0) {
            UblkCtlRequest cancel = { .op = UBLK_CTL_UPGRADE, .cancel = true };
            if (ublk_ctl_call(id, st.pid, &cancel, &rep, 10000, NULL) == 0) {
                ublk_ctl_reply_free(&rep);
            }
            error_report("upgrade: QUIESCE_DEV of device %u failed: %s%s", id, strerror(-kret),
                         kret == -EBUSY ? " (its requests did not finish within 30 s); the "
                         "old daemon keeps serving it" : "");
            goto out;
        }
        /* Its queues end by themselves unless one held only busy tags. */
        sys_pidfd_send_signal(pidfd, SIGTERM);
    } else {
        printf("upgrade: %s; killing the daemon and recovering with reissue instead\n",
               (features & UBLK_F_QUIESCE)
                   ? "the device was added without UBLK_F_QUIESCE (by an older ublkd)"
                   : "the kernel lacks UBLK_F_QUIESCE");
        fflush(stdout);
        if (!(info.flags & UBLK_F_USER_RECOVERY_REISSUE)) {
            error_report("upgrade: device %u was added with --recovery=fail: killing its daemon "
                         "would fail the requests it holds; upgrade without QUIESCE needs "
                         "--recovery=reissue", id);
            goto out;
        }
        if (sys_pidfd_send_signal(pidfd, SIGKILL) < 0) {
            error_report("upgrade: cannot kill device %u's daemon (pid %d): %s", id,
                         (int)st.pid, strerror(errno));
            goto out;
        }
        reissue = true;
    }
    if (!pidfd_exited(pidfd, 60000)) {
        error_report("upgrade: device %u's old daemon (pid %d) did not exit within 60 s", id,
                     (int)st.pid);
        goto out;
    }
    uint16_t state = 0;
    if (!wait_dev_state(id, UBLK_S_DEV_QUIESCED, 10000, &state)) {
        error_report("upgrade: device %u is %s after its daemon exited, not QUIESCED", id,
                     dev_state_name(state));
        goto out;
    }
    char idbuf[16];
    snprintf(idbuf, sizeof(idbuf), "%u", id);
    char *args[] = { (char *)bin_name, "recover", "-n", idbuf, reissue ? "--reissue" : NULL,
                     NULL };
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        error_report("upgrade: fork: %s", strerror(errno));
    } else if (child == 0) {
        extern char **environ;
        fexecve(bfd, args, environ);
        fprintf(stderr, "ublkd: upgrade: cannot run %s: %s\n", bin_name, strerror(errno));
        _exit(127);
    } else {
        int status = 0;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            ret = 0;
        }
    }
    if (ret != 0) {
        error_report("upgrade: the new daemon (%s) did not take device %u over; it stays "
                     "QUIESCED, its I/O waiting: 'ublkd recover -n %u' retries", bin_name, id,
                     id);
    }
out:
    if (pidfd >= 0) {
        close(pidfd);
    }
    ublk_ctrl_close(ctrl);
    ublk_dev_state_free(&st);
    close(bfd);
    return ret;
}

/* Ids of devices the kernel has, plus those with a state file.  False if
 * the run directory is there but refused (said why). */
static bool collect_ids(uint32_t *ids, int max, int *count)
{
    int n = 0;
    Error *err = NULL;
    int run_fd = ublk_run_dir_open(false, &err);
    bool run_ok = run_fd >= 0 || error_get_errno(err) == ENOENT;
    if (run_fd < 0 && !run_ok) {
        error_report_err(err);
    } else {
        error_free(err);
    }
    for (int k = 0; k < 2; k++) {
        DIR *dir = k == 0 ? opendir("/sys/class/ublk-char")
                          : run_fd >= 0 ? fdopendir(run_fd) : NULL;
        struct dirent *de;
        while (dir && (de = readdir(dir)) && n < max) {
            unsigned id;
            char tail[64] = "";
            if ((k == 0 && sscanf(de->d_name, "ublkc%u", &id) != 1) ||
                (k == 1 && (sscanf(de->d_name, "%u%63s", &id, tail) != 2 ||
                            strcmp(tail, ".json")))) {
                continue;
            }
            bool dup = false;
            for (int i = 0; i < n; i++) {
                dup |= ids[i] == id;
            }
            if (!dup) {
                ids[n++] = id;
            }
        }
        if (dir) {
            closedir(dir);
        } else if (k == 1 && run_fd >= 0) {
            close(run_fd);
        }
    }
    for (int i = 1; i < n; i++) {       /* insertion sort: lists are short */
        for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            uint32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    }
    *count = n;
    return run_ok;
}

/* A device as the kernel (GET_DEV_INFO) and its state file know it. */
typedef struct DevView {
    bool have_state, in_kernel;
    int kernel_err;                       /* GET_DEV_INFO's -errno if it failed */
    UblkDevState st;                      /* if have_state */
    struct ublksrv_ctrl_dev_info info;    /* if in_kernel */
    pid_t pid;                            /* of its daemon: the kernel's, else the
                                             state file's; 0 if neither has one */
} DevView;

/* False if neither knows device id (nothing to free then). */
static bool dev_view(UblkCtrl *ctrl, uint32_t id, DevView *v)
{
    Error *err = NULL;
    int ret = ublk_state_read(id, &v->st, &err);
    if (ret == -2) {
        /* Planted or damaged: never acted on. */
        warn_report("%s", error_get_pretty(err));
    }
    error_free(err);
    v->have_state = ret == 0;
    v->kernel_err = ctrl ? ublk_ctrl_get_info(ctrl, id, &v->info) : -ENODEV;
    v->in_kernel = v->kernel_err == 0;
    v->pid = v->in_kernel && v->info.ublksrv_pid > 0 ? v->info.ublksrv_pid
             : v->have_state ? v->st.pid : 0;
    return v->have_state || v->in_kernel;
}

static void dev_view_free(DevView *v)
{
    if (v->have_state) {
        ublk_dev_state_free(&v->st);
    }
}

/* Where devt is mounted (first mount point in our mount namespace). */
static bool find_mount(dev_t devt, char *where, size_t len)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f)) {
        unsigned maj, min;
        char mnt[PATH_MAX];
        /* "ID PARENT MAJ:MIN ROOT MOUNTPOINT ..." (octal escapes kept) */
        if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &maj, &min, mnt) == 3 &&
            makedev(maj, min) == devt) {
            snprintf(where, len, "%s", mnt);
            found = true;
        }
    }
    if (f) {
        fclose(f);
    }
    return found;
}

/* A process (not us) with an fd on block device devt: "pid N (comm)". */
static bool find_opener(dev_t devt, char *who, size_t len)
{
    DIR *proc = opendir("/proc");
    struct dirent *pe;
    bool found = false;
    while (proc && !found && (pe = readdir(proc))) {
        char *end;
        long pid = strtol(pe->d_name, &end, 10);
        if (*end || pid <= 0 || pid == getpid()) {
            continue;
        }
        found = proc_has_dev_open((pid_t)pid, S_IFBLK, devt);
        if (found) {
            char path[64];
            char comm[64] = "?";
            snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
            FILE *f = fopen(path, "r");
            if (f && fgets(comm, sizeof(comm), f)) {
                comm[strcspn(comm, "\n")] = 0;
            }
            if (f) {
                fclose(f);
            }
            snprintf(who, len, "pid %ld (%s) has it open", pid, comm);
        }
    }
    if (proc) {
        closedir(proc);
    }
    return found;
}

/*
 * Why /dev/ublkbID must not be taken away now (mounted, held by a holder
 * such as dm or md, open by a process), or false if nothing holds it.  An
 * exclusive open is tried only on a LIVE device: on a QUIESCED one the
 * last close could wait for writeback that nobody serves.
 */
static bool bdev_busy(uint32_t id, bool live, char *why, size_t len)
{
    char path[PATH_MAX];
    dev_t devt;
    snprintf(path, sizeof(path), "/sys/block/ublkb%u/dev", id);
    if (!sysfs_devt(path, &devt)) {
        return false;
    }
    char what[PATH_MAX];
    if (find_mount(devt, what, sizeof(what))) {
        snprintf(why, len, "mounted on %s", what);
        return true;
    }
    snprintf(path, sizeof(path), "/sys/block/ublkb%u/holders", id);
    DIR *h = opendir(path);
    struct dirent *he;
    while (h && (he = readdir(h))) {
        if (he->d_name[0] != '.') {
            snprintf(why, len, "held by %s", he->d_name);
            closedir(h);
            return true;
        }
    }
    if (h) {
        closedir(h);
    }
    if (find_opener(devt, what, sizeof(what))) {
        snprintf(why, len, "%s", what);
        return true;
    }
    if (live) {
        ublk_bdev_path(id, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == EBUSY) {
            snprintf(why, len, "opened exclusively by another user (mount, swap or a holder "
                     "in another namespace)");
            return true;
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    return false;
}

static int del_one(UblkCtrl *ctrl, uint32_t id, bool quiet_missing, bool force)
{
    DevView v;
    if (!dev_view(ctrl, id, &v)) {
        if (v.kernel_err == -EACCES || v.kernel_err == -EPERM) {
            /* Not provably ours: -a passes over it, -n says why. */
            if (!quiet_missing) {
                error_report("del: device %u: %s: another user's, or its char device was never "
                             "handed to you (then only root can delete it)", id,
                             strerror(-v.kernel_err));
            }
            return quiet_missing ? 0 : 1;
        }
        if (!quiet_missing) {
            error_report("del: no device %u", id);
        }
        return 1;
    }
    /* Taking a used disk away loses what its user has not synced yet.  A
     * short retry lets a transient opener (udev's blkid after add) go. */
    char why[PATH_MAX + 64];
    bool live = v.in_kernel && v.info.state == UBLK_S_DEV_LIVE;
    for (int tries = 0; !force && v.in_kernel && bdev_busy(id, live, why, sizeof(why)); tries++) {
        if (tries == 10) {
            error_report("del: /dev/ublkb%u is busy: %s (%s; --force takes it away anyway)",
                         id, why, strerror(EBUSY));
            dev_view_free(&v);
            return 1;
        }
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    /* What was checked above can change before the daemon stops the disk
     * (an open in between).  A kernel with SAFE_STOP_DEV checks and stops
     * in one step: stop it here, and a disk opened meanwhile is refused. */
    uint64_t feats = 0;
    if (!force && live && ctrl && ublk_ctrl_get_features(ctrl, &feats, NULL) == 0 &&
        (feats & UBLK_F_SAFE_STOP_DEV)) {
        int ret;
        for (int tries = 0; (ret = ublk_ctrl_try_stop_dev(ctrl, id)) == -EBUSY && tries < 10;
             tries++) {
            struct timespec ts = { 0, 50 * 1000000L };
            nanosleep(&ts, NULL);
        }
        if (ret == -EBUSY) {
            error_report("del: /dev/ublkb%u is open (the kernel refused TRY_STOP_DEV: %s; "
                         "--force takes it away anyway)", id, strerror(EBUSY));
            dev_view_free(&v);
            return 1;
        }
        if (ret < 0 && ret != -ENODEV) {
            /* The daemon's STOP_DEV below still stops it. */
            warn_report("del: TRY_STOP_DEV of device %u: %s", id, strerror(-ret));
        }
    }
    pid_t pid = v.pid;
    int pidfd = daemon_pidfd(id, pid, v.have_state ? &v.st : NULL);
    if (pidfd < 0 && v.have_state && v.st.pid != v.pid) {
        pidfd = daemon_pidfd(id, v.st.pid, &v.st);
        pid = pidfd >= 0 ? v.st.pid : pid;
    }
    if (pidfd < 0 && v.pid > 0 && kill(v.pid, 0) == 0) {
        warn_report("del: pid %d, recorded for device %u, is not its daemon (a reused pid): "
                    "not signalled", (int)v.pid, id);
    }
    bool in_kernel = v.in_kernel;
    dev_view_free(&v);
    if (pidfd >= 0 && !pidfd_exited(pidfd, 0)) {
        if (sys_pidfd_send_signal(pidfd, SIGTERM) < 0 && errno != ESRCH) {
            error_report("del: cannot signal the daemon (pid %d) of device %u: %s", (int)pid, id,
                         strerror(errno));
            close(pidfd);
            return 1;
        }
        /* The daemon drains and flushes; that can take a while on slow media. */
        if (!pidfd_exited(pidfd, 120000)) {
            error_report("del: daemon %d of device %u still running after 120 s", (int)pid, id);
            close(pidfd);
            return 1;
        }
        in_kernel = ctrl && ublk_ctrl_get_info(ctrl, id, &v.info) == 0;
    }
    if (pidfd >= 0) {
        close(pidfd);
    }
    if (in_kernel) {
        /* No daemon (killed, crashed): take the device down ourselves. */
        int ret = ublk_ctrl_stop_dev(ctrl, id);
        if (ret < 0 && ret != -ENODEV) {
            error_report("del: STOP_DEV of device %u: %s", id, strerror(-ret));
        }
        ret = ublk_ctrl_del_dev(ctrl, id);
        if (ret < 0 && ret != -ENODEV) {
            error_report("del: DEL_DEV of device %u: %s", id, strerror(-ret));
            return 1;
        }
    }
    ublk_state_remove(id);
    return 0;
}

static int cmd_del(int argc, char **argv)
{
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "all", no_argument, NULL, 'a' },
        { "force", no_argument, NULL, 'F' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false, all = false, force = false;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:ah", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case 'a': all = true; break;
        case 'F': force = true; break;
        case 'h':
            printf("usage: ublkd del -n ID | -a [--force]\n"
                   "Stop a device: in-flight I/O completes, the image is flushed and closed.\n"
                   "A device that is mounted, held or open is refused (EBUSY) unless --force;\n"
                   "on kernels with UBLK_F_SAFE_STOP_DEV the kernel checks that as it stops it.\n");
            return 0;
        default:
            return 2;
        }
    }
    if (have_id == all) {
        error_report("del: give either -n ID or -a");
        return 2;
    }
    Error *err = NULL;
    UblkCtrl *ctrl = ublk_ctrl_open(&err);
    if (!ctrl) {
        error_report_err(err);
        if (!all) {
            return 1;
        }
    }
    int rc = 0;
    if (all) {
        uint32_t ids[1024];
        int n;
        rc = !collect_ids(ids, ARRAY_SIZE(ids), &n);
        for (int i = 0; i < n; i++) {
            rc |= del_one(ctrl, ids[i], true, force);
        }
    } else {
        rc = del_one(ctrl, id, false, force);
    }
    ublk_ctrl_close(ctrl);
    return rc;
}

static const char *const op_names[BLK_OP__MAX] = {
    "read", "write", "flush", "discard", "write_zeroes",
};

/* "0-3,6": a CPU set as taskset -c prints it (ranges of three or more); "-"
 * when empty. */
static void cpus_to_string(const cpu_set_t *set, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = 0;
    for (int c = 0; c < CPU_SETSIZE && n < len; c++) {
        if (!CPU_ISSET(c, set)) {
            continue;
        }
        int e = c;
        while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set)) {
            e++;
        }
        if (e - c < 2) {
            e = c;
        }
        n += (size_t)snprintf(buf + n, len - n, e > c ? "%s%d-%d" : "%s%d", n ? "," : "", c, e);
        c = e;
    }
    if (!buf[0]) {
        snprintf(buf, len, "-");
    }
}

#define LIST_MAX_QUEUES 64

/* The daemon's queue threads (named "ublkID-qN" by ublk/queue.c; kind 't':
 * its per-I/O threads, "ublkID-tN"), by number: their tids (0 if not found)
 * and the CPUs each may run on. */
static void queue_threads(pid_t pid, uint32_t id, char kind, unsigned nq, pid_t *tids,
                          cpu_set_t *cpus)
{
    char path[64];
    memset(tids, 0, nq * sizeof(*tids));
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *dir = pid > 0 ? opendir(path) : NULL;
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        char comm_path[128], comm[32] = "";
        long tid = strtol(de->d_name, NULL, 10);
        if (tid <= 0) {
            continue;
        }
        snprintf(comm_path, sizeof(comm_path), "%s/%ld/comm", path, tid);
        FILE *f = fopen(comm_path, "r");
        unsigned did, q;
        char k, end;
        if (f && fgets(comm, sizeof(comm), f) &&
            sscanf(comm, "ublk%u-%c%u%c", &did, &k, &q, &end) == 4 && k == kind &&
            end == '\n' && did == id && q < nq) {
            tids[q] = (pid_t)tid;
            CPU_ZERO(&cpus[q]);
            sched_getaffinity((pid_t)tid, sizeof(cpus[q]), &cpus[q]);
        }
        if (f) {
            fclose(f);
        }
    }
    if (dir) {
        closedir(dir);
    }
}

/* A counter's node path and name: split at its last '/' or '.', whichever
 * comes later ("children.0.reads", "children.0/file/x"); 0 if neither. */
static int counter_prefix_len(const char *k)
{
    const char *dot = strrchr(k, '.'), *slash = strrchr(k, '/');
    const char *sep = dot > slash ? dot : slash;
    return sep ? (int)(sep - k) : 0;
}

/* The remote children first, one line each ("nbd children.0.file: connected
 * (reconnects 0)"), then the other node counters grouped by node:
 * "children.0.reads 5" and "children.0.errors 1" print as one line
 * "children.0  reads 5 errors 1". */
static void print_node_counters(const BlockAcctStats *st)
{
    UblkRemoteNode rn[BLK_NODE_COUNTERS_MAX];
    int nrn = ublk_stats_remote_nodes(st, rn, BLK_NODE_COUNTERS_MAX);
    for (int i = 0; i < nrn; i++) {
        printf("  %s%s%s: %s (reconnects %llu)\n", rn[i].driver, rn[i].node[0] ? " " : "",
               rn[i].node, rn[i].state, (unsigned long long)rn[i].reconnects);
    }
    for (int i = 0; i < st->n_node_counters;) {
        const char *k = st->node_counters[i].key;
        if (ublk_stats_is_remote_counter(k)) {
            i++;
            continue;
        }
        int plen = counter_prefix_len(k);
        printf("  %-12.*s", plen ? plen : 8, plen ? k : "counters");
        int j = i;
        for (; j < st->n_node_counters; j++) {
            const char *kj = st->node_counters[j].key;
            if (ublk_stats_is_remote_counter(kj)) {
                continue;
            }
            int pj = counter_prefix_len(kj);
            if (pj != plen || strncmp(kj, k, (size_t)plen)) {
                break;
            }
            printf(" %s %llu", pj ? kj + pj + 1 : kj,
                   (unsigned long long)st->node_counters[j].value);
        }
        printf("\n");
        i = j;
    }
}

static const char *recovery_name(uint64_t flags)
{
    if (!(flags & UBLK_F_USER_RECOVERY)) {
        return "none";
    }
    if (flags & UBLK_F_USER_RECOVERY_FAIL_IO) {
        return "fail-io";
    }
    return (flags & UBLK_F_USER_RECOVERY_REISSUE) ? "reissue" : "fail";
}

/* A layer of the image chain in a graph string (bdrv_graph_to_string): its
 * format and the file under it, through filters ("file.file.filename"). */
typedef struct ImageLayer {
    const char *format, *file;
} ImageLayer;

static int image_chain(const OptDict *g, ImageLayer *out, int max)
{
    char prefix[256] = "", key[300];
    int n = 0;
    while (n < max) {
        snprintf(key, sizeof(key), "%sdriver", prefix);
        const char *drv = optdict_get(g, key);
        if (!drv) {
            break;
        }
        out[n].format = drv;
        out[n].file = NULL;
        char fp[256];
        snprintf(fp, sizeof(fp), "%s", prefix);
        for (int depth = 0; depth < 8 && !out[n].file; depth++) {
            snprintf(key, sizeof(key), "%sfilename", fp);
            out[n].file = optdict_get(g, key);
            size_t l = strlen(fp);
            snprintf(fp + l, sizeof(fp) - l, "file.");
        }
        n++;
        size_t l = strlen(prefix);
        if (l + 9 >= sizeof(prefix)) {
            break;
        }
        snprintf(prefix + l, sizeof(prefix) - l, "backing.");
    }
    return n;
}

static int cmd_list(int argc, char **argv)
{
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t only = 0;
    bool have_id = false, json = false;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:jh", lo, &only, &have_id)) != -1) {
        switch (opt) {
        case 'j': json = true; break;
        case 'h':
            printf("usage: ublkd list [-n ID] [--json]\n");
            return 0;
        default:
            return 2;
        }
    }
#ifndef CONFIG_JSON
    if (json) {
        error_report("list: --json needs a build with CONFIG_JSON");
        return 2;
    }
#endif
    /* Without the control device the kernel's devices are invisible: say
     * so and fail, after listing what the state files know. */
    Error *ctrl_err = NULL;
    UblkCtrl *ctrl = ublk_ctrl_open(&ctrl_err);
    uint32_t ids[1024];
    int n = 1, rc = 0;
    if (have_id) {
        ids[0] = only;
    } else {
        rc = !collect_ids(ids, ARRAY_SIZE(ids), &n);
    }
#ifdef CONFIG_JSON
    json_object *arr = json_object_new_array();
#endif
    int found = 0;
    for (int i = 0; i < n; i++) {
        uint32_t id = ids[i];
        DevView v;
        if (!dev_view(ctrl, id, &v)) {
            if (!json && (v.kernel_err == -EACCES || v.kernel_err == -EPERM)) {
                /* Shown, so that a device left by a failed add is not invisible. */
                printf("dev %u: /dev/ublkb%u not accessible to you (%s): another user's, "
                       "or its char device was never handed to you\n", id, id,
                       strerror(-v.kernel_err));
                found++;
            }
            continue;
        }
        found++;
        const UblkDevState *st = &v.st;
        const struct ublksrv_ctrl_dev_info *info = &v.info;
        bool in_kernel = v.in_kernel;
        const char *state = in_kernel ? ublk_state_name(info->state) : "GONE";
        unsigned queues = in_kernel ? info->nr_hw_queues : st->nr_queues;
        unsigned depth = in_kernel ? info->queue_depth : st->depth;
        uint64_t flags = in_kernel ? info->flags : st->flags;
        pid_t pid = v.pid;
        bool alive = daemon_alive(id, pid, v.have_state ? st : NULL);
        const char *graph = v.have_state && st->graph ? st->graph : "-";
        BlockAcctStats stats;
        bool have_stats = ublk_stats_read(id, &stats) == 0;
        char fl[512];
        ublk_flags_to_string(flags, fl, sizeof(fl));
        /* What the kernel was told (GET_PARAMS), the daemon's queue threads,
         * the image chain from the graph, the mode the state file kept. */
        struct ublk_params prm;
        memset(&prm, 0, sizeof(prm));
        bool have_params = in_kernel && ublk_ctrl_get_params(ctrl, id, &prm) == 0;
        const struct ublk_param_basic *b = &prm.basic;
        unsigned nq = MIN(queues, (unsigned)LIST_MAX_QUEUES);
        pid_t tids[LIST_MAX_QUEUES];
        cpu_set_t cpus[LIST_MAX_QUEUES], kcpus;
        queue_threads(alive ? pid : 0, id, 'q', nq, tids, cpus);
        /* --per-io-threads: the threads share every queue's tags */
        unsigned nt = (flags & UBLK_F_PER_IO_DAEMON) && v.have_state
                      ? MIN(st->cfg.per_io_threads, (unsigned)LIST_MAX_QUEUES) : 0;
        pid_t ttids[LIST_MAX_QUEUES];
        cpu_set_t tcpus[LIST_MAX_QUEUES];
        queue_threads(alive && nt ? pid : 0, id, 't', nt, ttids, tcpus);
        const char *cache = v.have_state ? (st->cfg.cache ? st->cfg.cache : "none") : "-";
        /* How request data moves: what the kernel set up, not what was asked. */
        const char *zc_mode = flags & UBLK_F_AUTO_BUF_REG ? "auto-buf-reg"
                              : flags & UBLK_F_SUPPORT_ZERO_COPY ? "register"
                              : "off";
        bool user_copy = flags & UBLK_F_USER_COPY;
        OptDict *gd = v.have_state && st->graph ? optdict_parse(st->graph, NULL, NULL) : NULL;
        ImageLayer chain[16];
        int nchain = gd ? image_chain(gd, chain, 16) : 0;
        if (!json) {
            printf("dev %u: /dev/ublkb%u state %s queues %u depth %u pid %d%s\n", id, id, state,
                   queues, depth, (int)pid, pid && !alive ? " (dead)" : "");
            if (have_params) {
                printf("  size %llu bytes, logical block %u, physical block %u, max I/O %u, "
                       "read-only %s\n", (unsigned long long)b->dev_sectors << 9,
                       1u << b->logical_bs_shift, 1u << b->physical_bs_shift,
                       b->max_sectors << 9, (b->attrs & UBLK_ATTR_READ_ONLY) ? "yes" : "no");
            }
            printf("  cache %s, recovery %s, zero-copy %s, user-copy %s, batch %s\n", cache,
                   recovery_name(flags), zc_mode, user_copy ? "on" : "off",
                   (flags & UBLK_F_BATCH_IO) ? "on" : "off");
            for (unsigned q = 0; q < nq; q++) {
                char c1[256] = "-", c2[256] = "-";
                if (tids[q]) {
                    cpus_to_string(&cpus[q], c1, sizeof(c1));
                }
                if (in_kernel && ublk_ctrl_get_queue_affinity(ctrl, id, q, &kcpus) == 0) {
                    cpus_to_string(&kcpus, c2, sizeof(c2));
                }
                if (nt) {
                    printf("  queue %u: served by the I/O threads (kernel's affinity %s)\n", q, c2);
                } else {
                    printf("  queue %u: tid %d cpus %s (kernel's affinity %s)\n", q,
                           (int)tids[q], c1, c2);
                }
            }
            for (unsigned k = 0; k < nt; k++) {
                char c1[256] = "-";
                if (ttids[k]) {
                    cpus_to_string(&tcpus[k], c1, sizeof(c1));
                }
                printf("  I/O thread %u: tid %d cpus %s (one in %u of all queues' tags)\n", k,
                       (int)ttids[k], c1, nt);
            }
            for (int k = 0; k < nchain; k++) {
                printf("  %s: %s %s\n", k ? "backing" : "image", chain[k].format,
                       chain[k].file ? chain[k].file : "-");
            }
            printf("  flags: %s\n  graph: %s\n", fl[0] ? fl : "-", graph);
            if (have_stats) {
                for (int k = 0; k < BLK_OP__MAX; k++) {
                    printf("  %-12s ops %llu bytes %llu errors %llu\n", op_names[k],
                           (unsigned long long)stats.ops[k], (unsigned long long)stats.bytes[k],
                           (unsigned long long)stats.errors[k]);
                }
                printf("  fua writes   %llu\n", (unsigned long long)stats.fua_writes);
                if (flags & (UBLK_F_AUTO_BUF_REG | UBLK_F_SUPPORT_ZERO_COPY)) {
                    printf("  zero copy    bounced %llu ring copies %llu registered by "
                           "hand %llu\n", (unsigned long long)stats.zc_bounced,
                           (unsigned long long)stats.zc_ring_copies,
                           (unsigned long long)stats.zc_reg_fallbacks);
                }
                if (stats.events || stats.events_suppressed) {
                    printf("  events       reported %llu suppressed %llu (in the device log)\n",
                           (unsigned long long)stats.events,
                           (unsigned long long)stats.events_suppressed);
                }
                print_node_counters(&stats);
            }
        }
#ifdef CONFIG_JSON
        else {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "id", json_object_new_int64(id));
            char bdev[64];
            ublk_bdev_path(id, bdev, sizeof(bdev));
            json_object_object_add(o, "bdev", json_object_new_string(bdev));
            json_object_object_add(o, "state", json_object_new_string(state));
            json_object_object_add(o, "queues", json_object_new_int64(queues));
            json_object_object_add(o, "depth", json_object_new_int64(depth));
            json_object_object_add(o, "flags", json_object_new_int64((int64_t)flags));
            json_object_object_add(o, "flags_names", json_object_new_string(fl));
            json_object_object_add(o, "zero_copy", json_object_new_string(zc_mode));
            json_object_object_add(o, "batch", json_object_new_boolean(flags & UBLK_F_BATCH_IO));
            json_object_object_add(o, "pid", json_object_new_int64(pid));
            if (in_kernel) {
                json_object_object_add(o, "owner_uid", json_object_new_int64(info->owner_uid));
                json_object_object_add(o, "owner_gid", json_object_new_int64(info->owner_gid));
            }
            json_object_object_add(o, "daemon_alive", json_object_new_boolean(alive));
            if (have_params) {
                json_object_object_add(o, "size", json_object_new_int64(
                                           (int64_t)(b->dev_sectors << 9)));
                json_object_object_add(o, "logical_block_size",
                                       json_object_new_int64(1 << b->logical_bs_shift));
                json_object_object_add(o, "physical_block_size",
                                       json_object_new_int64(1 << b->physical_bs_shift));
                json_object_object_add(o, "max_io_size",
                                       json_object_new_int64((int64_t)b->max_sectors << 9));
                json_object_object_add(o, "read_only", json_object_new_boolean(
                                           b->attrs & UBLK_ATTR_READ_ONLY));
            }
            json_object_object_add(o, "cache", json_object_new_string(cache));
            json_object_object_add(o, "recovery", json_object_new_string(recovery_name(flags)));
            json_object_object_add(o, "user_copy", json_object_new_boolean(user_copy));
            json_object *fa = json_object_new_array();
            char fcopy[512], *save = NULL;
            snprintf(fcopy, sizeof(fcopy), "%s", fl);
            for (char *t = strtok_r(fcopy, " ,|", &save); t; t = strtok_r(NULL, " ,|", &save)) {
                json_object_array_add(fa, json_object_new_string(t));
            }
            json_object_object_add(o, "flag_list", fa);
            json_object *qa = json_object_new_array();
            for (unsigned q = 0; q < nq; q++) {
                json_object *qo = json_object_new_object();
                char c1[256] = "", c2[256] = "";
                json_object_object_add(qo, "queue", json_object_new_int64(q));
                json_object_object_add(qo, "tid", json_object_new_int64(tids[q]));
                if (tids[q]) {
                    cpus_to_string(&cpus[q], c1, sizeof(c1));
                    json_object_object_add(qo, "cpus", json_object_new_string(c1));
                }
                if (in_kernel && ublk_ctrl_get_queue_affinity(ctrl, id, q, &kcpus) == 0) {
                    cpus_to_string(&kcpus, c2, sizeof(c2));
                    json_object_object_add(qo, "kernel_affinity", json_object_new_string(c2));
                }
                json_object_array_add(qa, qo);
            }
            json_object_object_add(o, "queue_threads", qa);
            json_object *ta = json_object_new_array();
            for (unsigned k = 0; k < nt; k++) {
                json_object *to = json_object_new_object();
                char c1[256] = "";
                json_object_object_add(to, "thread", json_object_new_int64(k));
                json_object_object_add(to, "tid", json_object_new_int64(ttids[k]));
                if (ttids[k]) {
                    cpus_to_string(&tcpus[k], c1, sizeof(c1));
                    json_object_object_add(to, "cpus", json_object_new_string(c1));
                }
                json_object_array_add(ta, to);
            }
            json_object_object_add(o, "io_threads", ta);
            json_object *ia = json_object_new_array();
            for (int k = 0; k < nchain; k++) {
                json_object *io = json_object_new_object();
                json_object_object_add(io, "format", json_object_new_string(chain[k].format));
                if (chain[k].file) {
                    json_object_object_add(io, "file", json_object_new_string(chain[k].file));
                }
                json_object_array_add(ia, io);
            }
            json_object_object_add(o, "image", ia);
            json_object_object_add(o, "graph", json_object_new_string(graph));
            if (have_stats) {
                json_object *so = json_object_new_object();
                for (int k = 0; k < BLK_OP__MAX; k++) {
                    json_object *x = json_object_new_object();
                    json_object_object_add(x, "ops", json_object_new_int64(stats.ops[k]));
                    json_object_object_add(x, "bytes", json_object_new_int64(stats.bytes[k]));
                    json_object_object_add(x, "errors", json_object_new_int64(stats.errors[k]));
                    json_object_object_add(so, op_names[k], x);
                }
                json_object_object_add(so, "fua_writes",
                                       json_object_new_int64(stats.fua_writes));
                json_object_object_add(so, "zc_bounced",
                                       json_object_new_int64((int64_t)stats.zc_bounced));
                json_object_object_add(so, "zc_ring_copies",
                                       json_object_new_int64((int64_t)stats.zc_ring_copies));
                json_object_object_add(so, "zc_reg_fallbacks",
                                       json_object_new_int64((int64_t)stats.zc_reg_fallbacks));
                json_object_object_add(so, "events", json_object_new_int64((int64_t)stats.events));
                json_object_object_add(so, "events_suppressed",
                                       json_object_new_int64((int64_t)stats.events_suppressed));
                json_object *nc = json_object_new_object();
                for (int k = 0; k < stats.n_node_counters; k++) {
                    json_object_object_add(nc, stats.node_counters[k].key,
                                           json_object_new_int64(
                                               (int64_t)stats.node_counters[k].value));
                }
                json_object_object_add(so, "node_counters", nc);
                json_object_object_add(o, "stats", so);
                /* The remote children's state, read from those counters. */
                UblkRemoteNode rn[BLK_NODE_COUNTERS_MAX];
                int nrn = ublk_stats_remote_nodes(&stats, rn, BLK_NODE_COUNTERS_MAX);
                if (nrn) {
                    json_object *ra = json_object_new_array();
                    for (int k = 0; k < nrn; k++) {
                        json_object *r = json_object_new_object();
                        json_object_object_add(r, "node", json_object_new_string(rn[k].node));
                        json_object_object_add(r, "driver", json_object_new_string(rn[k].driver));
                        json_object_object_add(r, "state", json_object_new_string(rn[k].state));
                        json_object_object_add(r, "reconnects",
                                               json_object_new_int64((int64_t)rn[k].reconnects));
                        json_object_array_add(ra, r);
                    }
                    json_object_object_add(o, "remote", ra);
                }
            }
            json_object_array_add(arr, o);
        }
#endif
        optdict_free(gd);
        dev_view_free(&v);
    }
#ifdef CONFIG_JSON
    if (json) {
        printf("%s\n", json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    json_object_put(arr);
#endif
    ublk_ctrl_close(ctrl);
    if (ctrl_err) {
        error_prepend(&ctrl_err, "list: the kernel's devices cannot be listed: ");
        error_report_err(ctrl_err);
        return 1;
    }
    if (have_id && !found) {
        error_report("list: no device %u", only);
        return 1;
    }
    return rc;
}

static int cmd_features(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: ublkd features\nList the UBLK_F_* features of the kernel's ublk driver.\n");
        return 0;
    }
    Error *err = NULL;
    UblkCtrl *ctrl = ublk_ctrl_open(&err);
    if (!ctrl) {
        error_report_err(err);
        return 1;
    }
    uint64_t f;
    bool probed;
    int ret = ublk_ctrl_get_features(ctrl, &f, &probed);
    ublk_ctrl_close(ctrl);
    if (ret < 0) {
        error_report("features: GET_FEATURES on %s: %s", UBLK_CONTROL_PATH, strerror(-ret));
        return 1;
    }
    printf("features: 0x%llx%s\n", (unsigned long long)f,
           probed ? "" : " (assumed: this kernel has no GET_FEATURES)");
    for (unsigned b = 0; b < 64; b++) {
        if (f & (1ULL << b)) {
            const char *name = ublk_feature_name(b);
            const char *why = ublk_feature_unsupported(b);
            if (name && why) {
                printf("  UBLK_F_%s (not supported by ublkd: %s)\n", name, why);
            } else if (name) {
                printf("  UBLK_F_%s\n", name);
            } else {
                printf("  bit %u\n", b);
            }
        }
    }
    return 0;
}

static void quorum_usage(FILE *f)
{
    fprintf(f,
        "usage: ublkd quorum -n ID --replace N --with 'driver=...'\n"
        "       ublkd quorum -n ID --add 'driver=...'\n"
        "       ublkd quorum -n ID --remove N\n"
        "Change the children of device ID's quorum (its topmost quorum node) while it\n"
        "serves.  --replace swaps child N for a node opened from the options (as\n"
        "--blockdev takes them: dotted or json:; relative file names are made absolute\n"
        "here, so they mean what they mean in this directory); --add adds one as the\n"
        "last child; --remove takes child N out (the ones after it move down by one).\n"
        "A new child must have the quorum's size; it is rebuilt from the others in\n"
        "the background (progress in 'ublkd list': children.N.rebuild-done/-total/\n"
        "-eta-s) while the device serves: writes reach it at once, and it votes only\n"
        "where it is rebuilt.  Refused when the change would leave fewer complete\n"
        "children than vote-threshold, and for blkverify quorums.  The device's state\n"
        "records the new graph, so 'ublkd recover' reopens it (and rebuilds a child\n"
        "that was not complete again from the start).\n"
        "  -n, --id ID       the device\n"
        "  --replace N       the child to replace (with --with OPTIONS)\n"
        "  --add OPTIONS     a new child\n"
        "  --remove N        the child to remove\n");
}

static int parse_child_index(const char *arg, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < 0 || v > 1000) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int cmd_quorum(int argc, char **argv)
{
    enum { OPT_REPLACE = 256, OPT_WITH, OPT_ADD, OPT_REMOVE };
    static const struct option lo[] = {
        { "id", required_argument, NULL, 'n' },
        { "replace", required_argument, NULL, OPT_REPLACE },
        { "with", required_argument, NULL, OPT_WITH },
        { "add", required_argument, NULL, OPT_ADD },
        { "remove", required_argument, NULL, OPT_REMOVE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false;
    int opt, nops = 0;
    UblkCtlRequest req = { .op = UBLK_CTL_QUORUM, .index = -1 };
    const char *with = NULL, *idx_arg = NULL;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:h", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case OPT_REPLACE: req.change = BDRV_CHILD_REPLACE; idx_arg = optarg; nops++; break;
        case OPT_REMOVE: req.change = BDRV_CHILD_REMOVE; idx_arg = optarg; nops++; break;
        case OPT_ADD: req.change = BDRV_CHILD_ADD; with = optarg; nops++; break;
        case OPT_WITH: with = optarg; break;
        case 'h':
            quorum_usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (!have_id) {
        error_report("quorum: -n ID is required (try 'ublkd quorum --help')");
        return 2;
    }
    if (nops != 1) {
        error_report("quorum: give one of --replace N, --add OPTIONS, --remove N (try "
                     "'ublkd quorum --help')");
        return 2;
    }
    if (optind != argc) {
        error_report("quorum: unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (idx_arg && parse_child_index(idx_arg, &req.index) < 0) {
        error_report("quorum: invalid child number '%s' (0, 1, 2, ...)", idx_arg);
        return 2;
    }
    if (req.change == BDRV_CHILD_REPLACE && !with) {
        error_report("quorum: --replace N needs --with OPTIONS (the new child, e.g. "
                     "'driver=raw,file.filename=/path')");
        return 2;
    }
    if (req.change == BDRV_CHILD_REMOVE && with) {
        error_report("quorum: --with belongs to --replace; --remove takes none");
        return 2;
    }
    if (with) {
        char *abs = strdup(with);
        Error *err = NULL;
        if (!abs || absolutize_options(&abs, &err) < 0) {
            error_prepend(&err, "quorum: the new child's options: ");
            error_report_err(err);
            free(abs);
            return 2;
        }
        if (strlen(abs) >= sizeof(req.options)) {
            error_report("quorum: the new child's options are longer than %zu bytes",
                         sizeof(req.options) - 1);
            free(abs);
            return 2;
        }
        snprintf(req.options, sizeof(req.options), "%s", abs);
        free(abs);
    }
    UblkDevState st;
    Error *err = NULL;
    if (ublk_state_read(id, &st, &err) < 0) {
        error_prepend(&err, "quorum: device %u: ", id);
        error_report_err(err);
        return 1;
    }
    int ret = 1;
    if (!daemon_alive(id, st.pid, &st)) {
        error_report("quorum: device %u's daemon (pid %d) is not running%s", id, (int)st.pid,
                     (st.flags & UBLK_F_USER_RECOVERY) ? "; 'ublkd recover -n ID' first" : "");
        goto out;
    }
    UblkCtlReply rep;
    /* Generous: the change waits for the requests in flight and opens a node. */
    if (ublk_ctl_call(id, st.pid, &req, &rep, 120000, &err) < 0) {
        error_prepend(&err, "quorum: ");
        error_report_err(err);
        goto out;
    }
    if (!rep.ok) {
        error_report("quorum: %s", rep.message);
    } else {
        static const char *const what[] = { [BDRV_CHILD_REPLACE] = "replaced; rebuilding",
                                            [BDRV_CHILD_ADD] = "added; rebuilding",
                                            [BDRV_CHILD_REMOVE] = "removed" };
        printf("%s: children.%d %s\n", st.bdev ? st.bdev : "device", rep.index,
               what[req.change]);
        ret = 0;
    }
    ublk_ctl_reply_free(&rep);
out:
    ublk_dev_state_free(&st);
    return ret;
}

int dev_main(int argc, char **argv)
{
    const char *verb = argv[0];
    error_set_progname("ublkd");
    if (!strcmp(verb, "add")) {
        return cmd_add(argc, argv);
    }
    if (!strcmp(verb, "del")) {
        return cmd_del(argc, argv);
    }
    if (!strcmp(verb, "list")) {
        return cmd_list(argc, argv);
    }
    if (!strcmp(verb, "recover")) {
        return cmd_recover(argc, argv);
    }
    if (!strcmp(verb, "features")) {
        return cmd_features(argc, argv);
    }
    if (!strcmp(verb, "resize")) {
        return cmd_resize(argc, argv);
    }
    if (!strcmp(verb, "upgrade")) {
        return cmd_upgrade(argc, argv);
    }
    if (!strcmp(verb, "snapshot")) {
        return cmd_snapshot(argc, argv);
    }
    if (!strcmp(verb, "quorum")) {
        return cmd_quorum(argc, argv);
    }
    error_report("unknown device command '%s'", verb);
    return 2;
}
