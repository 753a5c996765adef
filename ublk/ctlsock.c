/*
 * ctlsock.c - the daemon's control socket (see include/ublk.h).
 *
 * Why a socket: some verbs (resize, upgrade) must run inside the
 * daemon, which owns the image and the queues; a signal carries no
 * argument and no answer.  Why here and so: the socket lives in the run
 * directory, which ublk_run_dir_open has checked (ours, 0700, no symlink),
 * and it is bound and connected through /proc/self/fd/DIRFD/NAME, so the
 * name is resolved in that checked directory and never through a path
 * someone could swap.  Both ends check the other's credentials
 * (SO_PEERCRED): the daemon serves only root and its own uid; the client
 * believes only the daemon it proved (its pid).
 *
 * The daemon's side runs on its main AioContext without blocking it: the
 * listening socket is watched with a one-shot POLL_ADD on the ring (as
 * io/aio-signal.c watches signals), a connection is read and answered by a
 * coroutine that waits with aio_co_poll, and a timer shuts down a peer that
 * does not send its request within CTL_READ_TIMEOUT_NS.  One connection at
 * a time: the listener is re-armed when it ends.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "aio.h"
#include "coroutine.h"
#include "ublk.h"

#define CTL_READ_TIMEOUT_NS (5 * 1000000000LL)
#define CTL_RETRY_NS        (100 * 1000000LL)

void ublk_ctl_socket_name(uint32_t dev_id, char *buf, size_t len)
{
    snprintf(buf, len, "%u.sock", dev_id);
}

bool ublk_ctl_peer_allowed(uid_t peer_uid, uid_t daemon_uid)
{
    return peer_uid == 0 || peer_uid == daemon_uid;
}

int ublk_resize_check(int64_t cur, uint64_t new_size, bool shrink, uint32_t logical_bs,
                      Error **errp)
{
    if (logical_bs < 512 || (logical_bs & (logical_bs - 1))) {
        error_setg(errp, "the device's logical block size %u is not a power of two >= 512",
                   logical_bs);
        return -1;
    }
    if (new_size == 0) {
        error_setg(errp, "size 0: a device needs at least one block");
        return -1;
    }
    if (new_size % logical_bs) {
        error_setg(errp, "size %llu is not a multiple of the device's logical block size %u "
                   "(the last %llu bytes could not be reached)", (unsigned long long)new_size,
                   logical_bs, (unsigned long long)(new_size % logical_bs));
        return -1;
    }
    if (new_size > (uint64_t)BDRV_MAX_LENGTH) {
        error_setg(errp, "size %llu is too large (at most %lld)", (unsigned long long)new_size,
                   (long long)BDRV_MAX_LENGTH);
        return -1;
    }
    if ((int64_t)new_size == cur) {
        return 1;
    }
    if ((int64_t)new_size < cur && !shrink) {
        error_setg(errp, "size %llu is smaller than the device (%lld bytes): the last %lld bytes "
                   "would be lost; pass --shrink if that is meant", (unsigned long long)new_size,
                   (long long)cur, (long long)(cur - (int64_t)new_size));
        return -1;
    }
    return 0;
}

#ifdef CONFIG_JSON
static char *json_line(json_object *o)
{
    const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE);
    char *out = t ? strdup(t) : NULL;
    json_object_put(o);
    return out;
}

static const char *const op_names[] = { [UBLK_CTL_RESIZE] = "resize",
                                         [UBLK_CTL_UPGRADE] = "upgrade",
                                         [UBLK_CTL_QUORUM] = "quorum",
                                         [UBLK_CTL_SNAPSHOT] = "snapshot" };
static const char *const change_names[] = { [BDRV_CHILD_REPLACE] = "replace",
                                            [BDRV_CHILD_ADD] = "add",
                                            [BDRV_CHILD_REMOVE] = "remove" };

char *ublk_ctl_request_to_json(const UblkCtlRequest *r)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ublkd-ctl", json_object_new_int(UBLK_CTL_VERSION));
    json_object_object_add(o, "op", json_object_new_string(op_names[r->op]));
    if (r->op == UBLK_CTL_RESIZE) {
        json_object_object_add(o, "size", json_object_new_uint64(r->size));
        json_object_object_add(o, "shrink", json_object_new_boolean(r->shrink));
    } else if (r->op == UBLK_CTL_UPGRADE) {
        json_object_object_add(o, "cancel", json_object_new_boolean(r->cancel));
    } else if (r->op == UBLK_CTL_QUORUM) {
        json_object_object_add(o, "change", json_object_new_string(change_names[r->change]));
        json_object_object_add(o, "index", json_object_new_int(r->index));
        if (r->change != BDRV_CHILD_REMOVE) {
            json_object_object_add(o, "options", json_object_new_string(r->options));
        }
    } else if (r->op == UBLK_CTL_SNAPSHOT) {
        json_object_object_add(o, "name", json_object_new_string(r->options));
    }
    return json_line(o);
}

/* The top-level object of a message, its version checked. */
static json_object *parse_message(const char *text, const char *what, Error **errp)
{
    if (strlen(text) > UBLK_CTL_MAX_MSG) {
        error_setg(errp, "%s of %zu bytes: at most %d", what, strlen(text), UBLK_CTL_MAX_MSG);
        return NULL;
    }
    json_object *o = json_tokener_parse(text);
    json_object *v;
    if (!o || !json_object_is_type(o, json_type_object)) {
        error_setg(errp, "%s is not a JSON object", what);
        json_object_put(o);
        return NULL;
    }
    if (!json_object_object_get_ex(o, "ublkd-ctl", &v) || !json_object_is_type(v, json_type_int)) {
        error_setg(errp, "%s has no \"ublkd-ctl\" version", what);
        json_object_put(o);
        return NULL;
    }
    if (json_object_get_int64(v) != UBLK_CTL_VERSION) {
        error_setg(errp, "%s is of control protocol version %lld; this ublkd speaks version %d "
                   "(the daemon and the ublkd binary differ: restart the device, or use the "
                   "binary that started it)", what, (long long)json_object_get_int64(v),
                   UBLK_CTL_VERSION);
        json_object_put(o);
        return NULL;
    }
    return o;
}

/* An unsigned 64-bit field: json-c keeps integers as int64 or uint64. */
static bool get_u64(json_object *o, const char *k, uint64_t *out, Error **errp)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v)) {
        error_setg(errp, "no \"%s\"", k);
        return false;
    }
    if (!json_object_is_type(v, json_type_int)) {
        error_setg(errp, "\"%s\": %.64s is not an integer", k, json_object_to_json_string(v));
        return false;
    }
    /* json-c would read a negative number as 0 through get_uint64. */
    if (json_object_get_int64(v) < 0) {
        error_setg(errp, "\"%s\": %.64s is negative", k, json_object_to_json_string(v));
        return false;
    }
    *out = json_object_get_uint64(v);
    return true;
}

static bool get_flag(json_object *o, const char *k, bool *out, Error **errp)
{
    json_object *v;
    *out = false;
    if (!json_object_object_get_ex(o, k, &v)) {
        return true;
    }
    if (!json_object_is_type(v, json_type_boolean)) {
        error_setg(errp, "\"%s\": %.64s is not true or false", k, json_object_to_json_string(v));
        return false;
    }
    *out = json_object_get_boolean(v);
    return true;
}

static int parse_quorum(json_object *o, UblkCtlRequest *r, Error **errp)
{
    json_object *v;
    const char *ch = json_object_object_get_ex(o, "change", &v) &&
                     json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    if (!ch) {
        error_setg(errp, "no \"change\" string (replace, add or remove)");
        return -1;
    }
    int c = -1;
    for (int i = 0; i < (int)ARRAY_SIZE(change_names); i++) {
        if (!strcmp(ch, change_names[i])) {
            c = i;
        }
    }
    if (c < 0) {
        error_setg(errp, "\"change\": \"%.64s\" is not replace, add or remove", ch);
        return -1;
    }
    r->change = (BdrvChildChange)c;
    if (!json_object_object_get_ex(o, "index", &v) || !json_object_is_type(v, json_type_int)) {
        error_setg(errp, "no integer \"index\"");
        return -1;
    }
    int64_t idx = json_object_get_int64(v);
    if (idx < (r->change == BDRV_CHILD_ADD ? -1 : 0) || idx > 1000) {
        error_setg(errp, "\"index\": %lld is out of range", (long long)idx);
        return -1;
    }
    r->index = (int)idx;
    bool has = json_object_object_get_ex(o, "options", &v);
    if (r->change == BDRV_CHILD_REMOVE) {
        if (has) {
            error_setg(errp, "\"options\" given for a remove");
            return -1;
        }
        return 0;
    }
    if (!has || !json_object_is_type(v, json_type_string) || !json_object_get_string(v)[0]) {
        error_setg(errp, "no \"options\" string for the new child");
        return -1;
    }
    snprintf(r->options, sizeof(r->options), "%s", json_object_get_string(v));
    return 0;
}

int ublk_ctl_request_parse(const char *text, UblkCtlRequest *r, Error **errp)
{
    memset(r, 0, sizeof(*r));
    json_object *o = parse_message(text, "the request", errp), *v;
    if (!o) {
        return -1;
    }
    int ret = -1;
    const char *op = json_object_object_get_ex(o, "op", &v) &&
                     json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    if (!op) {
        error_setg(errp, "the request has no \"op\" string");
    } else if (!strcmp(op, "resize")) {
        r->op = UBLK_CTL_RESIZE;
        if (get_u64(o, "size", &r->size, errp) && get_flag(o, "shrink", &r->shrink, errp)) {
            ret = 0;
        } else {
            error_prepend(errp, "resize request: ");
        }
    } else if (!strcmp(op, "upgrade")) {
        r->op = UBLK_CTL_UPGRADE;
        if (get_flag(o, "cancel", &r->cancel, errp)) {
            ret = 0;
        } else {
            error_prepend(errp, "upgrade request: ");
        }
    } else if (!strcmp(op, "quorum")) {
        r->op = UBLK_CTL_QUORUM;
        if (parse_quorum(o, r, errp) == 0) {
            ret = 0;
        } else {
            error_prepend(errp, "quorum request: ");
        }
    } else if (!strcmp(op, "snapshot")) {
        r->op = UBLK_CTL_SNAPSHOT;
        const char *name = json_object_object_get_ex(o, "name", &v) &&
                           json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                    : NULL;
        if (!name) {
            error_setg(errp, "snapshot request: no \"name\" string");
        } else if (strlen(name) > 255) {
            error_setg(errp, "snapshot request: a name of %zu bytes: at most 255",
                       strlen(name));
        } else {
            snprintf(r->options, sizeof(r->options), "%s", name);
            ret = 0;
        }
    } else {
        error_setg(errp, "unknown request \"%.64s\" (this daemon knows: resize, upgrade, "
                   "quorum, snapshot)", op);
    }
    json_object_put(o);
    return ret;
}

char *ublk_ctl_reply_to_json(const UblkCtlReply *r)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ublkd-ctl", json_object_new_int(UBLK_CTL_VERSION));
    json_object_object_add(o, "ok", json_object_new_boolean(r->ok));
    if (r->ok) {
        json_object_object_add(o, "size", json_object_new_uint64(r->size));
        json_object_object_add(o, "old_size", json_object_new_uint64(r->old_size));
        if (r->index >= 0) {
            json_object_object_add(o, "index", json_object_new_int(r->index));
        }
        if (r->snapshot_id[0]) {
            json_object_object_add(o, "snapshot_id", json_object_new_string(r->snapshot_id));
            json_object_object_add(o, "pause_ns", json_object_new_uint64(r->pause_ns));
        }
    } else {
        json_object_object_add(o, "errno", json_object_new_int(r->err > 0 ? r->err : EIO));
        json_object_object_add(o, "error", json_object_new_string(r->message ? r->message
                                                                            : "failed"));
    }
    return json_line(o);
}

int ublk_ctl_reply_parse(const char *text, UblkCtlReply *r, Error **errp)
{
    memset(r, 0, sizeof(*r));
    r->index = -1;
    json_object *o = parse_message(text, "the daemon's reply", errp), *v;
    if (!o) {
        return -1;
    }
    bool ok = get_flag(o, "ok", &r->ok, errp);
    if (ok && r->ok) {
        ok = get_u64(o, "size", &r->size, errp) && get_u64(o, "old_size", &r->old_size, errp);
        uint64_t idx;
        if (ok && json_object_object_get_ex(o, "index", &v)) {
            ok = get_u64(o, "index", &idx, errp);
            r->index = ok && idx <= 1000 ? (int)idx : -1;
        }
        if (ok && json_object_object_get_ex(o, "snapshot_id", &v)) {
            if (!json_object_is_type(v, json_type_string)) {
                error_setg(errp, "\"snapshot_id\" is not a string");
                ok = false;
            } else {
                snprintf(r->snapshot_id, sizeof(r->snapshot_id), "%s", json_object_get_string(v));
                ok = get_u64(o, "pause_ns", &r->pause_ns, errp);
            }
        }
    } else if (ok) {
        uint64_t e = EIO;
        ok = get_u64(o, "errno", &e, errp);
        r->err = e > 0 && e < 4096 ? (int)e : EIO;
        const char *msg = json_object_object_get_ex(o, "error", &v) &&
                          json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                   : "the daemon gave no reason";
        r->message = strdup(msg);
    }
    if (!ok) {
        error_prepend(errp, "the daemon's reply: ");
        ublk_ctl_reply_free(r);
    }
    json_object_put(o);
    return ok ? 0 : -1;
}
#else
char *ublk_ctl_request_to_json(const UblkCtlRequest *r)
{
    (void)r;
    return NULL;
}

int ublk_ctl_request_parse(const char *text, UblkCtlRequest *r, Error **errp)
{
    (void)text;
    memset(r, 0, sizeof(*r));
    error_setg(errp, "control requests need a build with CONFIG_JSON");
    return -1;
}

char *ublk_ctl_reply_to_json(const UblkCtlReply *r)
{
    (void)r;
    return NULL;
}

int ublk_ctl_reply_parse(const char *text, UblkCtlReply *r, Error **errp)
{
    (void)text;
    memset(r, 0, sizeof(*r));
    error_setg(errp, "control requests need a build with CONFIG_JSON");
    return -1;
}
#endif

void ublk_ctl_reply_free(UblkCtlReply *r)
{
    free(r->message);
    r->message = NULL;
}

/* sockaddr for NAME in the directory open as dirfd. */
static socklen_t dir_addr(struct sockaddr_un *a, int dirfd, const char *name)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path, sizeof(a->sun_path), "/proc/self/fd/%d/%s", dirfd, name);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1);
}

/* ---- the daemon's side ---- */

struct UblkCtlServer {
    AioContext *ctx;
    int dirfd, fd;
    char name[32];
    ino_t ino;                 /* of the socket's name, to unlink only ours */
    dev_t dev;
    UblkCtlHandler *fn;
    void *opaque;
    AioCompletion comp;
    bool armed, closing, busy;
    unsigned refused;
    int conn;
    AioTimer timer;            /* a connection's read deadline */
    AioTimer retry;            /* re-arming after a failed accept */
};

static void listen_arm(UblkCtlServer *s);

static void conn_timeout(void *opaque)
{
    UblkCtlServer *s = opaque;
    /* Wakes the coroutine's poll; its read then sees the end. */
    shutdown(s->conn, SHUT_RDWR);
}

/* Write all of buf (small) to the non-blocking fd, waiting on the ring. */
static int coroutine_fn conn_write(int fd, const char *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += n;
        } else if (n < 0 && errno == EAGAIN) {
            int r = aio_co_poll(fd, POLLOUT);
            if (r < 0) {
                return r;
            }
            if (r & (POLLHUP | POLLERR)) {
                return -EPIPE;
            }
        } else if (n < 0 && errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

static void coroutine_fn conn_entry(void *opaque)
{
    UblkCtlServer *s = opaque;
    char buf[UBLK_CTL_MAX_MSG + 2];
    size_t n = 0;
    Error *err = NULL;
    UblkCtlRequest req;
    UblkCtlReply rep = { .index = -1 };
    bool complete = false;

    aio_timer_mod(&s->timer, aio_now_ns(s->ctx) + CTL_READ_TIMEOUT_NS);
    while (!complete && n < sizeof(buf) - 1) {
        ssize_t r = recv(s->conn, buf + n, sizeof(buf) - 1 - n, 0);
        if (r > 0) {
            complete = memchr(buf + n, '\n', r) != NULL;
            n += r;
        } else if (r == 0) {
            break;                    /* the peer shut down (or the timer did) */
        } else if (errno == EAGAIN) {
            if (aio_co_poll(s->conn, POLLIN) < 0) {
                break;
            }
        } else if (errno != EINTR) {
            break;
        }
    }
    aio_timer_del(&s->timer);
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) {
        *nl = 0;
    }
    if (!nl && n >= sizeof(buf) - 1) {
        error_setg(&err, "the request is longer than %d bytes", UBLK_CTL_MAX_MSG);
    } else if (!n) {
        error_setg(&err, "no request");
    } else {
        ublk_ctl_request_parse(buf, &req, &err);
    }
    if (err) {
        rep.ok = false;
        rep.err = EINVAL;
        rep.message = strdup(error_get_pretty(err));
        ublk_log(LOG_WARNING, "control socket: %s", error_get_pretty(err));
        error_free(err);
    } else {
        s->fn(s->opaque, &req, &rep);
    }
    char *text = ublk_ctl_reply_to_json(&rep);
    if (text) {
        size_t len = strlen(text);
        if (conn_write(s->conn, text, len) == 0) {
            conn_write(s->conn, "\n", 1);
        }
        free(text);
    }
    ublk_ctl_reply_free(&rep);
    close(s->conn);
    s->conn = -1;
    s->busy = false;
    if (!s->closing) {
        listen_arm(s);
    }
}

/* A refused peer gets its reason before the connection closes. */
static void conn_refuse(UblkCtlServer *s, int fd, const char *msg)
{
    UblkCtlReply rep = { .ok = false, .err = EACCES, .message = (char *)msg, .index = -1 };
    char *text = ublk_ctl_reply_to_json(&rep);
    if (text) {
        /* Small, into an empty socket buffer: one non-blocking try. */
        ssize_t w = send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        free(text);
    }
    s->refused++;
    ublk_log(LOG_WARNING, "control socket: %s", msg);
}

static void listen_ready(AioCompletion *c, int res, unsigned flags)
{
    UblkCtlServer *s = container_of(c, UblkCtlServer, comp);
    (void)flags;
    s->armed = false;
    if (s->closing) {
        return;
    }
    if (res < 0 && res != -EINTR && res != -ECANCELED) {
        ublk_log(LOG_ERR, "control socket: poll: %s; control requests are no longer taken",
                 strerror(-res));
        return;
    }
    int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) {
            listen_arm(s);
        } else {
            /* EMFILE, ENOBUFS...: the connection stays queued and the poll
             * would fire at once again; look again a little later. */
            ublk_log(LOG_WARNING, "control socket: accept: %s", strerror(errno));
            aio_timer_mod(&s->retry, aio_now_ns(s->ctx) + CTL_RETRY_NS);
        }
        return;
    }
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        conn_refuse(s, fd, "refused a peer whose credentials cannot be read");
        close(fd);
        listen_arm(s);
        return;
    }
    if (!ublk_ctl_peer_allowed(cred.uid, geteuid())) {
        char msg[160];
        snprintf(msg, sizeof(msg), "refused pid %d: uid %u is neither root nor the daemon's "
                 "user (uid %u)", (int)cred.pid, (unsigned)cred.uid, (unsigned)geteuid());
        conn_refuse(s, fd, msg);
        close(fd);
        listen_arm(s);
        return;
    }
    s->conn = fd;
    s->busy = true;
    co_enter(co_create(conn_entry, s));
}

static void listen_retry(void *opaque)
{
    UblkCtlServer *s = opaque;
    if (!s->closing) {
        listen_arm(s);
    }
}

static void listen_arm(UblkCtlServer *s)
{
    struct io_uring_sqe *sqe = aio_get_sqe(s->ctx);
    io_uring_prep_poll_add(sqe, s->fd, POLLIN);
    aio_sqe_set_completion(sqe, &s->comp);
    s->armed = true;
}

UblkCtlServer *ublk_ctl_server_new(AioContext *ctx, uint32_t dev_id, UblkCtlHandler *fn,
                                   void *opaque, Error **errp)
{
    UblkCtlServer *s = calloc(1, sizeof(*s));
    if (!s) {
        error_setg(errp, "out of memory for the control socket");
        return NULL;
    }
    s->ctx = ctx;
    s->fn = fn;
    s->opaque = opaque;
    s->conn = -1;
    s->fd = -1;
    s->comp.cb = listen_ready;
    ublk_ctl_socket_name(dev_id, s->name, sizeof(s->name));
    s->dirfd = ublk_run_dir_open(true, errp);
    if (s->dirfd < 0) {
        free(s);
        return NULL;
    }
    const char *dir = ublk_run_dir();
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        error_setg_errno(errp, errno, "cannot create the control socket %s/%s", dir, s->name);
        goto fail;
    }
    /* Whatever has the name is a dead daemon's socket of this id (only
     * one daemon serves an id) or was put in our own directory by us. */
    if (unlinkat(s->dirfd, s->name, 0) < 0 && errno != ENOENT) {
        error_setg_errno(errp, errno, "cannot remove the old control socket %s/%s", dir,
                         s->name);
        goto fail;
    }
    struct sockaddr_un a;
    socklen_t al = dir_addr(&a, s->dirfd, s->name);
    if (bind(s->fd, (struct sockaddr *)&a, al) < 0) {
        error_setg_errno(errp, errno, "cannot bind the control socket %s/%s", dir, s->name);
        goto fail;
    }
    struct stat st;
    if (fchmodat(s->dirfd, s->name, 0600, 0) < 0 ||
        fstatat(s->dirfd, s->name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode)) {
        error_setg_errno(errp, errno, "cannot secure the control socket %s/%s", dir, s->name);
        unlinkat(s->dirfd, s->name, 0);
        goto fail;
    }
    s->ino = st.st_ino;
    s->dev = st.st_dev;
    if (listen(s->fd, 8) < 0) {
        error_setg_errno(errp, errno, "cannot listen on the control socket %s/%s", dir, s->name);
        unlinkat(s->dirfd, s->name, 0);
        goto fail;
    }
    aio_timer_init(&s->timer, ctx, conn_timeout, s);
    aio_timer_init(&s->retry, ctx, listen_retry, s);
    listen_arm(s);
    return s;
fail:
    if (s->fd >= 0) {
        close(s->fd);
    }
    close(s->dirfd);
    free(s);
    return NULL;
}

bool ublk_ctl_server_busy(const UblkCtlServer *s)
{
    return s && s->busy;
}

unsigned ublk_ctl_server_refused(const UblkCtlServer *s)
{
    return s ? s->refused : 0;
}

static void cancel_done(AioCompletion *c, int res, unsigned flags)
{
    (void)c, (void)res, (void)flags;
}

void ublk_ctl_server_free(UblkCtlServer *s)
{
    if (!s) {
        return;
    }
    s->closing = true;
    aio_timer_del(&s->retry);
    /* A request in progress finishes first (its reply is owed). */
    AIO_WAIT_WHILE(s->ctx, s->busy);
    if (s->armed) {
        /* The poll's completion points at s: wait for it (cancelled). */
        static AioCompletion cancel_comp = { .cb = cancel_done };
        struct io_uring_sqe *sqe = aio_get_sqe(s->ctx);
        io_uring_prep_cancel(sqe, &s->comp, 0);
        aio_sqe_set_completion(sqe, &cancel_comp);
        AIO_WAIT_WHILE(s->ctx, s->armed);
    }
    struct stat st;
    if (fstatat(s->dirfd, s->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino == s->ino &&
        st.st_dev == s->dev) {
        unlinkat(s->dirfd, s->name, 0);
    }
    close(s->fd);
    close(s->dirfd);
    free(s);
}

/* ---- the client's side ---- */

int ublk_ctl_call(uint32_t dev_id, pid_t daemon_pid, const UblkCtlRequest *req,
                  UblkCtlReply *reply, int timeout_ms, Error **errp)
{
    char name[32], path[600];
    memset(reply, 0, sizeof(*reply));
    ublk_ctl_socket_name(dev_id, name, sizeof(name));
    snprintf(path, sizeof(path), "%s/%s", ublk_run_dir(), name);
    char *text = ublk_ctl_request_to_json(req);
    if (!text) {
        error_setg(errp, "control requests need a build with CONFIG_JSON");
        return -1;
    }
    int dirfd = ublk_run_dir_open(false, errp);
    if (dirfd < 0) {
        free(text);
        return -1;
    }
    int ret = -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a;
    socklen_t al = dir_addr(&a, dirfd, name);
    struct stat st;
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot create a socket");
        goto out;
    }
    /* Only a socket of ours or root's (the directory is ours: anything
     * else in it was put there by someone with our rights). */
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT) {
            error_setg(errp, "device %u's daemon has no control socket (%s): it is not "
                       "running, or it is a ublkd from before control sockets", dev_id, path);
        } else {
            error_setg_errno(errp, errno, "%s", path);
        }
        goto out;
    }
    if (!S_ISSOCK(st.st_mode) || !ublk_ctl_peer_allowed(st.st_uid, geteuid())) {
        error_setg(errp, "%s is not a socket of yours: refusing it", path);
        goto out;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, al) < 0) {
        if (errno == ECONNREFUSED) {
            error_setg(errp, "nobody listens on %s: device %u's daemon is not running",
                       path, dev_id);
        } else {
            error_setg_errno(errp, errno, "cannot connect to %s", path);
        }
        goto out;
    }
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        error_setg_errno(errp, errno, "%s: cannot read the peer's credentials", path);
        goto out;
    }
    if (!ublk_ctl_peer_allowed(cred.uid, geteuid()) ||
        (daemon_pid > 0 && cred.pid != daemon_pid)) {
        error_setg(errp, "%s is served by pid %d (uid %u), not by device %u's daemon (pid %d): "
                   "refusing to talk to it", path, (int)cred.pid, (unsigned)cred.uid, dev_id,
                   (int)daemon_pid);
        goto out;
    }
    size_t len = strlen(text), done = 0;
    text[len] = '\n';      /* the terminating NUL becomes the line end */
    while (done < len + 1) {
        ssize_t n = send(fd, text + done, len + 1 - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            break;       /* the daemon refused us before reading: its reason follows */
        }
        if (n <= 0) {
            error_setg_errno(errp, n < 0 ? errno : EIO, "cannot send the request to %s", path);
            goto out;
        }
        done += n;
    }
    char buf[UBLK_CTL_MAX_MSG + 2];
    size_t n = 0;
    while (n < sizeof(buf) - 1) {
        ssize_t r = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            error_setg(errp, "device %u's daemon did not answer within %d ms (%s)", dev_id,
                       timeout_ms, path);
            goto out;
        }
        if (r < 0 && errno == ECONNRESET && n) {
            break;       /* the reply came, then the reset of a refusal */
        }
        if (r < 0) {
            error_setg_errno(errp, errno, "cannot read the reply from %s", path);
            goto out;
        }
        if (r == 0) {
            break;
        }
        n += r;
    }
    buf[n] = 0;
    if (!n) {
        error_setg(errp, "device %u's daemon closed %s without an answer", dev_id, path);
        goto out;
    }
    buf[strcspn(buf, "\n")] = 0;
    ret = ublk_ctl_reply_parse(buf, reply, errp);
out:
    if (fd >= 0) {
        close(fd);
    }
    close(dirfd);
    free(text);
    return ret;
}
