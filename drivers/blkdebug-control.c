/*
 * blkdebug-control.c - the fault-injection filter's control file: a rules
 * file (control=PATH) polled on the node's home context and published to
 * the queue threads as a new immutable rule set (see drivers/blkdebug.c for
 * the syntax, drivers/blkdebug-rules.c for why the swap needs no lock).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "blkdebug-int.h"


/*
 * The daemon may run as root and the path may sit in a directory others can
 * write: never follow a symlink planted as the file (O_NOFOLLOW), never
 * block on a FIFO or device put there (O_NONBLOCK, then regular files only),
 * refuse a hard link (st_nlink > 1: it could be a link to any file of ours)
 * and files that someone other than us or root owns or may write.  A
 * symlink in a directory component above is the operator's choice of path.
 */
static int read_control(const char *path, char **text, struct stat *st, Error **errp)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP) {
            error_setg(errp, "is a symbolic link (refused)");
        } else {
            error_setg_errno(errp, e, "cannot open it");
        }
        return -e;
    }
    int ret = -EINVAL;
    if (fstat(fd, st) < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "cannot stat it");
        goto out;
    }
    if (!S_ISREG(st->st_mode)) {
        error_setg(errp, "is not a regular file (refused)");
        goto out;
    }
    if (st->st_nlink > 1) {
        error_setg(errp, "has %ju hard links (refused)", (uintmax_t)st->st_nlink);
        goto out;
    }
    if (st->st_uid != geteuid() && st->st_uid != 0) {
        error_setg(errp, "is owned by uid %u, neither us nor root (refused)",
                   (unsigned)st->st_uid);
        goto out;
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        error_setg(errp, "is writable by group or others (refused)");
        goto out;
    }
    if (st->st_size > BLKDEBUG_CTL_MAX_BYTES) {
        error_setg(errp, "is larger than %d bytes", BLKDEBUG_CTL_MAX_BYTES);
        goto out;
    }
    char *buf = malloc(BLKDEBUG_CTL_MAX_BYTES + 1);
    if (!buf) {
        ret = -ENOMEM;
        error_setg(errp, "out of memory");
        goto out;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, BLKDEBUG_CTL_MAX_BYTES + 1 - len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            ret = -errno;
            error_setg_errno(errp, errno, "cannot read it");
            free(buf);
            goto out;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
        if (len > BLKDEBUG_CTL_MAX_BYTES) {   /* grew while we read */
            error_setg(errp, "is larger than %d bytes", BLKDEBUG_CTL_MAX_BYTES);
            free(buf);
            goto out;
        }
    }
    buf[len] = 0;
    *text = buf;
    ret = 0;
out:
    close(fd);
    return ret;
}

/* Lines (or comma lists on one line) joined into one option string: blank
 * lines and lines starting with '#' are skipped. */
static char *join_lines(const char *text)
{
    char *out = malloc(strlen(text) + 2), *o = out;
    if (!out) {
        return NULL;
    }
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        const char *e = nl ? nl : p + strlen(p);
        const char *b = p;
        while (b < e && (*b == ' ' || *b == '\t')) {
            b++;
        }
        const char *t = e;
        while (t > b && (t[-1] == ' ' || t[-1] == '\t' || t[-1] == '\r' || t[-1] == ',')) {
            t--;
        }
        if (t > b && *b != '#') {
            if (o != out) {
                *o++ = ',';
            }
            memcpy(o, b, (size_t)(t - b));
            o += t - b;
        }
        p = nl ? nl + 1 : e;
    }
    *o = 0;
    return out;
}

/* Parse the file's text into a rule set (*out NULL: no rules).  Only rules
 * and seed= belong there: align and the rest are fixed at open. */
static int parse_control(BlkdebugState *s, const char *text, BlkdebugRuleSet **out,
                         Error **errp)
{
    char *joined = join_lines(text);
    if (!joined) {
        error_setg(errp, "out of memory");
        return -ENOMEM;
    }
    OptDict *d = *joined ? optdict_parse(joined, NULL, errp) : optdict_new();
    free(joined);
    if (!d) {
        return -EINVAL;
    }
    int64_t seed;
    int ret = optdict_take_int(d, "seed", (int64_t)s->seed, &seed, errp);
    if (ret == 0) {
        ret = blkdebug_parse_rules(d, (uint64_t)seed, out, errp);
    }
    if (ret == 0 && optdict_check_empty(d, "the control file", errp) < 0) {
        blkdebug_rules_free(*out);
        *out = NULL;
        ret = -EINVAL;
    }
    optdict_free(d);
    return ret;
}

static void publish(BlkdebugState *s, BlkdebugRuleSet *set)
{
    BlkdebugRuleSet *old = __atomic_exchange_n(&s->ctl, set, __ATOMIC_ACQ_REL);
    if (old) {
        old->retired_next = s->retired;
        s->retired = old;
    }
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Load the file if it changed since we last looked.  A missing file is no
 * rules; a bad one keeps the rules we have (errp says why).  Returns 1 if
 * the published rules changed, 0 if not, -errno for a bad file. */
static int control_load(BlockDriverState *bs, Error **errp)
{
    BlkdebugState *s = bs->opaque;
    struct stat st;
    if (lstat(s->ctl_path, &st) < 0) {
        if (errno != ENOENT && errno != ENOTDIR) {
            error_setg_errno(errp, errno, "cannot stat it");
            return -errno;
        }
        s->ctl_seen = false;
        if (!__atomic_load_n(&s->ctl, __ATOMIC_RELAXED)) {
            return 0;
        }
        publish(s, NULL);
        return 1;
    }
    if (s->ctl_seen && same_file(&st, &s->ctl_stat)) {
        return 0;
    }
    char *text = NULL;
    int ret = read_control(s->ctl_path, &text, &st, errp);
    /* Remember what we looked at, good or bad: a bad file is reported once,
     * not every 100 ms, and looked at again when it changes. */
    s->ctl_stat = st;
    s->ctl_seen = true;
    if (ret < 0) {
        return ret;
    }
    BlkdebugRuleSet *set;
    ret = parse_control(s, text, &set, errp);
    free(text);
    if (ret < 0) {
        return ret;
    }
    publish(s, set);
    s->ctl_loads++;
    return 1;
}

bool blkdebug_control_poll(BlockDriverState *bs)
{
    BlkdebugState *s = bs->opaque;
    Error *err = NULL;
    int ret = control_load(bs, &err);
    if (ret < 0) {
        error_report("blkdebug: node '%s': control file '%s': %s; keeping the previous rules",
                     bs->node_name ? bs->node_name : "", s->ctl_path, error_get_pretty(err));
        error_free(err);
    }
    return ret > 0;
}

static void control_timer_cb(void *opaque)
{
    BlockDriverState *bs = opaque;
    BlkdebugState *s = bs->opaque;
    blkdebug_control_poll(bs);
    aio_timer_mod(&s->ctl_timer, aio_now_ns(s->ctl_timer.ctx) + BLKDEBUG_CTL_POLL_NS);
}

int blkdebug_control_start(BlockDriverState *bs, Error **errp)
{
    BlkdebugState *s = bs->opaque;
    if (control_load(bs, errp) < 0) {
        error_prepend(errp, "blkdebug: control file '%s': ", s->ctl_path);
        return -EINVAL;
    }
    AioContext *ctx = bdrv_get_home_context(bs);
    aio_timer_init(&s->ctl_timer, ctx, control_timer_cb, bs);
    aio_timer_mod(&s->ctl_timer, aio_now_ns(ctx) + BLKDEBUG_CTL_POLL_NS);
    s->ctl_timer_live = true;
    return 0;
}

void blkdebug_control_stop(BlockDriverState *bs)
{
    BlkdebugState *s = bs->opaque;
    if (s->ctl_timer_live) {
        aio_timer_del(&s->ctl_timer);
        s->ctl_timer_live = false;
    }
}

uint64_t blkdebug_control_loads(BlockDriverState *bs)
{
    return ((BlkdebugState *)bs->opaque)->ctl_loads;
}
