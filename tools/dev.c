/*
 * dev.c - the device verbs of `ublkd`: add, del, list, recover, features.
 *
 * `add` and `recover` fork a daemon (ublk/server.c) and wait on a pipe until
 * it says the block device is usable ("OK /dev/ublkbN") or why it is not
 * ("ERR ..."), so the command's exit status is trustworthy for scripts.
 * `del` asks the daemon to stop (SIGTERM) and waits for it; a device whose
 * daemon is gone (killed, crashed) is stopped and deleted directly.
 * `list` merges what the kernel knows (GET_DEV_INFO) with the daemons'
 * state and counter files.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "tools.h"
#include "ublk.h"

static void msleep(unsigned ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Alive and not a zombie (an orphaned daemon may wait to be reaped). */
static bool pid_alive(pid_t pid)
{
    if (pid <= 0 || kill(pid, 0) < 0) {
        return false;
    }
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return false;
    }
    bool alive = true;
    if (fgets(buf, sizeof(buf), f)) {
        char *p = strrchr(buf, ')');
        if (p && (p[2] == 'Z' || p[2] == 'X')) {
            alive = false;
        }
    }
    fclose(f);
    return alive;
}

/* Files become absolute so that `recover` works from any directory. */
static void absolutize(UblkDevConfig *c)
{
    for (int i = 0; i < c->nfiles; i++) {
        char *r = realpath(c->files[i], NULL);
        if (r) {
            free(c->files[i]);
            c->files[i] = r;
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
                int lf = open(cfg->log_file, O_WRONLY | O_APPEND | O_CREAT, 0644);
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
    /* "WARN <message>" lines may come before the verdict. */
    char *line = buf, *nl;
    while ((nl = strchr(line, '\n'))) {
        *nl = 0;
        if (strncmp(line, "WARN ", 5)) {
            break;
        }
        warn_report("%s", line + 5);
        line = nl + 1;
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
        if (access(cfg.files[i], F_OK) < 0) {
            error_report("%s: %s", cfg.files[i], strerror(errno));
            ublk_dev_config_free(&cfg);
            return 1;
        }
    }
    if (cfg.dev_id >= 0) {
        UblkDevState old;
        if (ublk_state_read(cfg.dev_id, &old, NULL) == 0) {
            bool alive = pid_alive(old.pid);
            ublk_dev_state_free(&old);
            if (alive) {
                error_report("device id %d is already in use", cfg.dev_id);
                ublk_dev_config_free(&cfg);
                return 1;
            }
        }
    }
    absolutize(&cfg);
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
    if (pid_alive(st.pid)) {
        error_report("recover: device %u is still served by pid %d", id, (int)st.pid);
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

/* Ids of devices the kernel has, plus those with a state file. */
static int collect_ids(uint32_t *ids, int max)
{
    int n = 0;
    const char *dirs[] = { "/sys/class/ublk-char", ublk_run_dir() };
    for (int k = 0; k < 2; k++) {
        DIR *dir = opendir(dirs[k]);
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
        }
    }
    for (int i = 1; i < n; i++) {       /* insertion sort: lists are short */
        for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            uint32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    }
    return n;
}

/* A device as the kernel (GET_DEV_INFO) and its state file know it. */
typedef struct DevView {
    bool have_state, in_kernel;
    UblkDevState st;                      /* if have_state */
    struct ublksrv_ctrl_dev_info info;    /* if in_kernel */
    pid_t pid;                            /* of its daemon: the kernel's, else the
                                             state file's; 0 if neither has one */
} DevView;

/* False if neither knows device id (nothing to free then). */
static bool dev_view(UblkCtrl *ctrl, uint32_t id, DevView *v)
{
    v->have_state = ublk_state_read(id, &v->st, NULL) == 0;
    v->in_kernel = ctrl && ublk_ctrl_get_info(ctrl, id, &v->info) == 0;
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

static int del_one(UblkCtrl *ctrl, uint32_t id, bool quiet_missing)
{
    DevView v;
    bool known = dev_view(ctrl, id, &v);
    dev_view_free(&v);          /* del needs only the pid and in_kernel */
    pid_t pid = v.pid;
    bool in_kernel = v.in_kernel;
    if (!known) {
        if (!quiet_missing) {
            error_report("del: no device %u", id);
        }
        return 1;
    }
    if (pid_alive(pid)) {
        if (kill(pid, SIGTERM) < 0) {
            error_report("del: cannot signal the daemon (pid %d) of device %u: %s", (int)pid, id,
                         strerror(errno));
            return 1;
        }
        /* The daemon drains and flushes; that can take a while on slow media. */
        for (int waited = 0; pid_alive(pid); waited += 20) {
            if (waited == 120000) {
                error_report("del: daemon %d of device %u still running after 120 s",
                             (int)pid, id);
                return 1;
            }
            msleep(20);
        }
        in_kernel = ctrl && ublk_ctrl_get_info(ctrl, id, &v.info) == 0;
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
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t id = 0;
    bool have_id = false, all = false;
    int opt;
    optind = 0;
    while ((opt = verb_getopt(argc, argv, ":n:ah", lo, &id, &have_id)) != -1) {
        switch (opt) {
        case 'a': all = true; break;
        case 'h':
            printf("usage: ublkd del -n ID | -a\n"
                   "Stop a device: in-flight I/O completes, the image is flushed and closed.\n");
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
        int n = collect_ids(ids, ARRAY_SIZE(ids));
        for (int i = 0; i < n; i++) {
            rc |= del_one(ctrl, ids[i], true);
        }
    } else {
        rc = del_one(ctrl, id, false);
    }
    ublk_ctrl_close(ctrl);
    return rc;
}

static const char *const op_names[BLK_OP__MAX] = {
    "read", "write", "flush", "discard", "write_zeroes",
};

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
    UblkCtrl *ctrl = ublk_ctrl_open(NULL);   /* optional: state files still work */
    uint32_t ids[1024];
    int n = have_id ? 1 : collect_ids(ids, ARRAY_SIZE(ids));
    if (have_id) {
        ids[0] = only;
    }
#ifdef CONFIG_JSON
    json_object *arr = json_object_new_array();
#endif
    int found = 0;
    for (int i = 0; i < n; i++) {
        uint32_t id = ids[i];
        DevView v;
        if (!dev_view(ctrl, id, &v)) {
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
        bool alive = pid_alive(pid);
        const char *graph = v.have_state && st->graph ? st->graph : "-";
        BlockAcctStats stats;
        bool have_stats = ublk_stats_read(id, &stats) == 0;
        char fl[512];
        ublk_flags_to_string(flags, fl, sizeof(fl));
        if (!json) {
            printf("dev %u: /dev/ublkb%u state %s queues %u depth %u pid %d%s\n", id, id, state,
                   queues, depth, (int)pid, pid && !alive ? " (dead)" : "");
            printf("  flags: %s\n  graph: %s\n", fl[0] ? fl : "-", graph);
            if (have_stats) {
                for (int k = 0; k < BLK_OP__MAX; k++) {
                    printf("  %-12s ops %llu bytes %llu errors %llu\n", op_names[k],
                           (unsigned long long)stats.ops[k], (unsigned long long)stats.bytes[k],
                           (unsigned long long)stats.errors[k]);
                }
                printf("  fua writes   %llu\n", (unsigned long long)stats.fua_writes);
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
            json_object_object_add(o, "pid", json_object_new_int64(pid));
            if (in_kernel) {
                json_object_object_add(o, "owner_uid", json_object_new_int64(info->owner_uid));
                json_object_object_add(o, "owner_gid", json_object_new_int64(info->owner_gid));
            }
            json_object_object_add(o, "daemon_alive", json_object_new_boolean(alive));
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
                json_object_object_add(o, "stats", so);
            }
            json_object_array_add(arr, o);
        }
#endif
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
    if (have_id && !found) {
        error_report("list: no device %u", only);
        return 1;
    }
    return 0;
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
            if (name) {
                printf("  UBLK_F_%s\n", name);
            } else {
                printf("  bit %u\n", b);
            }
        }
    }
    return 0;
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
    error_report("unknown device command '%s'", verb);
    return 2;
}
