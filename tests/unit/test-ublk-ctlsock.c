/*
 * test-ublk-ctlsock.c - the daemon's control socket (ublk/ctlsock.c): the
 * request and reply texts and their refusals, the size rules of resize,
 * who may talk to a daemon, and a real socket end to end (a server on this
 * thread's AioContext, the blocking client on another thread).  A peer of
 * another uid cannot be made without root, so the daemon's refusal is
 * tested through its decision (ublk_ctl_peer_allowed) here and through the
 * socket in tests/vm/test_resize.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#ifdef CONFIG_UBLK
#include "aio.h"
#include "ublk.h"

#define M 1048576ULL

/* errp's message contains want; frees it. */
static void assert_error_says(Error *err, const char *want)
{
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), want)) {
        print_error("message '%s' does not say '%s'\n", error_get_pretty(err), want);
        fail();
    }
    error_free(err);
}

static void assert_request_refused(const char *text, const char *want)
{
    UblkCtlRequest r;
    Error *err = NULL;
    assert_int_equal(ublk_ctl_request_parse(text, &r, &err), -1);
    assert_error_says(err, want);
}

static void test_request_round_trip(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    UblkCtlRequest in = { .op = UBLK_CTL_RESIZE, .size = UINT64_MAX - 511, .shrink = true }, out;
    char *text = ublk_ctl_request_to_json(&in);
    assert_non_null(text);
    assert_null(strchr(text, '\n'));      /* one line: the newline ends it */
    assert_int_equal(ublk_ctl_request_parse(text, &out, NULL), 0);
    assert_int_equal(out.op, UBLK_CTL_RESIZE);
    assert_true(out.size == in.size);
    assert_true(out.shrink);
    free(text);
    /* shrink may be left out: false. */
    assert_int_equal(ublk_ctl_request_parse("{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":4096}",
                                            &out, NULL), 0);
    assert_false(out.shrink);
    assert_true(out.size == 4096);
    /* upgrade: no fields. */
    UblkCtlRequest up = { .op = UBLK_CTL_UPGRADE };
    text = ublk_ctl_request_to_json(&up);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"op\":\"upgrade\""));
    assert_int_equal(ublk_ctl_request_parse(text, &out, NULL), 0);
    assert_int_equal(out.op, UBLK_CTL_UPGRADE);
    assert_false(out.cancel);
    free(text);
    up.cancel = true;
    text = ublk_ctl_request_to_json(&up);
    assert_int_equal(ublk_ctl_request_parse(text, &out, NULL), 0);
    assert_true(out.cancel);
    free(text);
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"upgrade\",\"cancel\":1}",
                           "upgrade request: \"cancel\": 1 is not true or false");
#else
    skip();
#endif
}

static void test_request_refusals(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    assert_request_refused("", "not a JSON object");
    assert_request_refused("[1]", "not a JSON object");
    assert_request_refused("{\"op\":\"resize\",\"size\":1}", "no \"ublkd-ctl\" version");
    assert_request_refused("{\"ublkd-ctl\":\"1\",\"op\":\"resize\",\"size\":1}",
                           "no \"ublkd-ctl\" version");
    assert_request_refused("{\"ublkd-ctl\":2,\"op\":\"resize\",\"size\":1}",
                           "version 2; this ublkd speaks version 1");
    assert_request_refused("{\"ublkd-ctl\":0,\"op\":\"resize\",\"size\":1}", "version 0");
    assert_request_refused("{\"ublkd-ctl\":1,\"size\":1}", "no \"op\"");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"backup\"}",
                           "unknown request \"backup\" (this daemon knows: resize, upgrade, "
                           "quorum, snapshot)");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"resize\"}", "resize request: no \"size\"");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":-4096}", "negative");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":\"1G\"}",
                           "is not an integer");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":4096.5}",
                           "is not an integer");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":4096,\"shrink\":1}",
                           "\"shrink\": 1 is not true or false");
    char *big = malloc(UBLK_CTL_MAX_MSG + 100);
    assert_non_null(big);
    memset(big, ' ', UBLK_CTL_MAX_MSG + 99);
    big[UBLK_CTL_MAX_MSG + 99] = 0;
    assert_request_refused(big, "at most 4096");
    free(big);
#else
    skip();
#endif
}

static void test_reply_round_trip(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    UblkCtlReply ok = { .ok = true, .size = 128 * M, .old_size = 64 * M }, out;
    char *text = ublk_ctl_reply_to_json(&ok);
    assert_int_equal(ublk_ctl_reply_parse(text, &out, NULL), 0);
    free(text);
    assert_true(out.ok);
    assert_true(out.size == 128 * M && out.old_size == 64 * M);
    assert_null(out.message);
    UblkCtlReply bad = { .ok = false, .err = EOPNOTSUPP, .message = "device 3: no" };
    text = ublk_ctl_reply_to_json(&bad);
    assert_int_equal(ublk_ctl_reply_parse(text, &out, NULL), 0);
    free(text);
    assert_false(out.ok);
    assert_int_equal(out.err, EOPNOTSUPP);
    assert_string_equal(out.message, "device 3: no");
    ublk_ctl_reply_free(&out);
    /* A reply of another version is not believed. */
    Error *err = NULL;
    assert_int_equal(ublk_ctl_reply_parse("{\"ublkd-ctl\":9,\"ok\":true}", &out, &err), -1);
    assert_error_says(err, "version 9");
    err = NULL;
    assert_int_equal(ublk_ctl_reply_parse("{\"ublkd-ctl\":1,\"ok\":true}", &out, &err), -1);
    assert_error_says(err, "no \"size\"");
#else
    skip();
#endif
}

static void test_snapshot_request(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    UblkCtlRequest in = { .op = UBLK_CTL_SNAPSHOT }, out;
    snprintf(in.options, sizeof(in.options), "before \"upgrade\", 2026");
    char *text = ublk_ctl_request_to_json(&in);
    assert_non_null(text);
    assert_int_equal(ublk_ctl_request_parse(text, &out, NULL), 0);
    free(text);
    assert_int_equal(out.op, UBLK_CTL_SNAPSHOT);
    assert_string_equal(out.options, in.options);
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"snapshot\"}",
                           "snapshot request: no \"name\" string");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"snapshot\",\"name\":7}",
                           "snapshot request: no \"name\" string");
    char big[400];
    memset(big, 'x', sizeof(big));
    snprintf(big, sizeof(big), "{\"ublkd-ctl\":1,\"op\":\"snapshot\",\"name\":\"%0300d\"}", 0);
    assert_request_refused(big, "a name of 300 bytes: at most 255");
    /* The reply carries the id and the pause; others carry none. */
    UblkCtlReply ok = { .ok = true, .size = 4096, .old_size = 4096, .index = -1,
                        .snapshot_id = "12", .pause_ns = 1234567 }, r;
    text = ublk_ctl_reply_to_json(&ok);
    assert_int_equal(ublk_ctl_reply_parse(text, &r, NULL), 0);
    free(text);
    assert_string_equal(r.snapshot_id, "12");
    assert_true(r.pause_ns == 1234567);
    Error *err = NULL;
    assert_int_equal(ublk_ctl_reply_parse("{\"ublkd-ctl\":1,\"ok\":true,\"size\":1,"
                                          "\"old_size\":1,\"snapshot_id\":\"1\"}", &r, &err),
                     -1);
    assert_error_says(err, "no \"pause_ns\"");
#else
    skip();
#endif
}

static void test_quorum_request(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    UblkCtlRequest in = { .op = UBLK_CTL_QUORUM, .change = BDRV_CHILD_REPLACE, .index = 1 }, out;
    snprintf(in.options, sizeof(in.options), "driver=raw,file.filename=/a \"b\",,c");
    char *text = ublk_ctl_request_to_json(&in);
    assert_non_null(text);
    assert_null(strchr(text, '\n'));
    assert_int_equal(ublk_ctl_request_parse(text, &out, NULL), 0);
    free(text);
    assert_int_equal(out.op, UBLK_CTL_QUORUM);
    assert_int_equal(out.change, BDRV_CHILD_REPLACE);
    assert_int_equal(out.index, 1);
    assert_string_equal(out.options, in.options);
    UblkCtlRequest rm = { .op = UBLK_CTL_QUORUM, .change = BDRV_CHILD_REMOVE, .index = 0 };
    text = ublk_ctl_request_to_json(&rm);
    assert_null(strstr(text, "options"));
    assert_int_equal(ublk_ctl_request_parse(text, &out, NULL), 0);
    free(text);
    assert_int_equal(out.change, BDRV_CHILD_REMOVE);
    assert_int_equal(out.index, 0);
    assert_int_equal(ublk_ctl_request_parse("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":"
                                            "\"add\",\"index\":-1,\"options\":\"a=b\"}",
                                            &out, NULL), 0);
    assert_int_equal(out.change, BDRV_CHILD_ADD);
    assert_int_equal(out.index, -1);
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"index\":1}",
                           "quorum request: no \"change\" string");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":\"swap\","
                           "\"index\":1}", "\"change\": \"swap\" is not replace, add or remove");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":\"remove\"}",
                           "no integer \"index\"");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":\"remove\","
                           "\"index\":-1}", "\"index\": -1 is out of range");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":\"replace\","
                           "\"index\":1}", "no \"options\" string for the new child");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":\"replace\","
                           "\"index\":1,\"options\":\"\"}", "no \"options\" string");
    assert_request_refused("{\"ublkd-ctl\":1,\"op\":\"quorum\",\"change\":\"remove\","
                           "\"index\":1,\"options\":\"x\"}", "\"options\" given for a remove");
    /* The reply says which child; other replies carry no index. */
    UblkCtlReply ok = { .ok = true, .size = 4096, .old_size = 4096, .index = 3 }, r;
    text = ublk_ctl_reply_to_json(&ok);
    assert_int_equal(ublk_ctl_reply_parse(text, &r, NULL), 0);
    free(text);
    assert_int_equal(r.index, 3);
    ok.index = -1;
    text = ublk_ctl_reply_to_json(&ok);
    assert_null(strstr(text, "index"));
    assert_int_equal(ublk_ctl_reply_parse(text, &r, NULL), 0);
    free(text);
    assert_int_equal(r.index, -1);
#else
    skip();
#endif
}

static void test_peer_allowed(void **state)
{
    (void)state;
    assert_true(ublk_ctl_peer_allowed(0, 1000));      /* root, to a user's daemon */
    assert_true(ublk_ctl_peer_allowed(1000, 1000));   /* the daemon's own user */
    assert_true(ublk_ctl_peer_allowed(0, 0));
    assert_false(ublk_ctl_peer_allowed(1001, 1000));  /* another user */
    assert_false(ublk_ctl_peer_allowed(1000, 0));     /* a user, to root's daemon */
    assert_false(ublk_ctl_peer_allowed(65534, 0));
}

static void test_resize_check(void **state)
{
    (void)state;
    Error *err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, 128 * M, false, 512, NULL), 0);
    assert_int_equal(ublk_resize_check(64 * M, 64 * M, false, 512, NULL), 1);
    assert_int_equal(ublk_resize_check(64 * M, 64 * M, true, 4096, NULL), 1);
    assert_int_equal(ublk_resize_check(64 * M, 32 * M, true, 512, NULL), 0);
    assert_int_equal(ublk_resize_check(64 * M, 32 * M, false, 512, &err), -1);
    assert_error_says(err, "the last 33554432 bytes would be lost; pass --shrink");
    err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, 64 * M + 512, false, 4096, &err), -1);
    assert_error_says(err, "not a multiple of the device's logical block size 4096 "
                           "(the last 512 bytes");
    err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, 64 * M + 100, false, 512, &err), -1);
    assert_error_says(err, "not a multiple");
    err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, 0, true, 512, &err), -1);
    assert_error_says(err, "size 0");
    err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, (uint64_t)BDRV_MAX_LENGTH + 512, false, 512,
                                       &err), -1);
    assert_error_says(err, "too large");
    err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, UINT64_MAX - 511, false, 512, &err), -1);
    assert_error_says(err, "too large");
    err = NULL;
    assert_int_equal(ublk_resize_check(64 * M, 128 * M, false, 1000, &err), -1);
    assert_error_says(err, "logical block size 1000");
}

/* ---- a real socket ---- */

typedef struct Call {
    uint32_t id;
    pid_t pid;
    UblkCtlRequest req;
    UblkCtlReply rep;
    int ret;
    char err[512];
    int done;
} Call;

static void *call_thread(void *opaque)
{
    Call *c = opaque;
    Error *err = NULL;
    c->ret = ublk_ctl_call(c->id, c->pid, &c->req, &c->rep, 10000, &err);
    if (err) {
        snprintf(c->err, sizeof(c->err), "%s", error_get_pretty(err));
        error_free(err);
    }
    __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Run one client call on a thread while this thread's loop serves. */
static void run_call(AioContext *ctx, Call *c)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, call_thread, c), 0);
    while (!__atomic_load_n(&c->done, __ATOMIC_ACQUIRE)) {
        aio_poll(ctx, false);
        usleep(1000);
    }
    pthread_join(t, NULL);
}

typedef struct Handled {
    int calls;
    UblkCtlRequest last;
} Handled;

static void handler(void *opaque, const UblkCtlRequest *req, UblkCtlReply *rep)
{
    Handled *h = opaque;
    h->calls++;
    h->last = *req;
    if (req->size == 12345) {
        rep->ok = false;
        rep->err = EINVAL;
        rep->message = strdup("device 5: size 12345 is no good");
        return;
    }
    rep->ok = true;
    rep->old_size = 64 * M;
    rep->size = req->size;
}

/* A raw client: send text, return what comes back (caller frees).  With
 * text "" it sends nothing and keeps its side open: a silent peer. */
static void *raw_thread(void *opaque)
{
    char **io = opaque;   /* [0] path, [1] text in, [2] reply out */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", io[0]);
    char *buf = calloc(1, 8192);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        size_t len = strlen(io[1]);
        if (len) {
            ssize_t w = send(fd, io[1], len, MSG_NOSIGNAL);
            (void)w;
            shutdown(fd, SHUT_WR);
        }
        size_t n = 0;
        ssize_t r;
        while (n < 8191 && (r = recv(fd, buf + n, 8191 - n, 0)) > 0) {
            n += r;
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    __atomic_store_n(&io[2], buf, __ATOMIC_RELEASE);
    return NULL;
}

static int64_t vclock_ns;
static int64_t vclock(void *opaque)
{
    (void)opaque;
    return vclock_ns;
}

/* tick_ns: how far the (virtual) clock moves per poll, 0 = not at all. */
static char *raw_call_ticking(AioContext *ctx, const char *path, const char *text,
                              int64_t tick_ns)
{
    char *io[3] = { (char *)path, (char *)text, NULL };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, raw_thread, io), 0);
    while (!__atomic_load_n(&io[2], __ATOMIC_ACQUIRE)) {
        aio_poll(ctx, false);
        usleep(1000);
        vclock_ns += tick_ns;
    }
    pthread_join(t, NULL);
    return io[2];
}

static char *raw_call(AioContext *ctx, const char *path, const char *text)
{
    return raw_call_ticking(ctx, path, text, 0);
}

static void test_socket_end_to_end(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    char dir[] = "/var/tmp/ublkd-test-ctlsock-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char run[300], path[400];
    snprintf(run, sizeof(run), "%s/run", dir);
    setenv("UBLKD_RUN_DIR", run, 1);
    snprintf(path, sizeof(path), "%s/5.sock", run);
    AioContext *ctx = aio_main_init(NULL);
    assert_non_null(ctx);

    /* Nobody there yet: said so, naming the socket. */
    Call c = { .id = 5, .pid = getpid(), .req = { .op = UBLK_CTL_RESIZE, .size = 128 * M } };
    assert_int_equal(mkdir(run, 0700), 0);
    run_call(ctx, &c);
    assert_int_equal(c.ret, -1);
    assert_non_null(strstr(c.err, "has no control socket"));
    assert_non_null(strstr(c.err, "5.sock"));

    /* A socket left by a dead daemon: nobody listens. */
    int dead = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    assert_true(strlen(path) < sizeof(a.sun_path));
    memcpy(a.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(dead, (struct sockaddr *)&a, sizeof(a)), 0);
    close(dead);
    memset(&c, 0, sizeof(c));
    c = (Call){ .id = 5, .pid = getpid(), .req = { .op = UBLK_CTL_RESIZE, .size = 128 * M } };
    run_call(ctx, &c);
    assert_int_equal(c.ret, -1);
    assert_non_null(strstr(c.err, "nobody listens"));

    /* The daemon replaces it, 0600. */
    Handled h = { 0 };
    Error *err = NULL;
    UblkCtlServer *s = ublk_ctl_server_new(ctx, 5, handler, &h, &err);
    assert_non_null(s);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    c = (Call){ .id = 5, .pid = getpid(),
                .req = { .op = UBLK_CTL_RESIZE, .size = 128 * M, .shrink = true } };
    run_call(ctx, &c);
    assert_int_equal(c.ret, 0);
    assert_true(c.rep.ok);
    assert_true(c.rep.size == 128 * M && c.rep.old_size == 64 * M);
    assert_int_equal(h.calls, 1);
    assert_true(h.last.size == 128 * M && h.last.shrink);
    assert_false(ublk_ctl_server_busy(s));

    /* The daemon's error comes back as its message. */
    c = (Call){ .id = 5, .pid = getpid(), .req = { .op = UBLK_CTL_RESIZE, .size = 12345 } };
    run_call(ctx, &c);
    assert_int_equal(c.ret, 0);
    assert_false(c.rep.ok);
    assert_int_equal(c.rep.err, EINVAL);
    assert_string_equal(c.rep.message, "device 5: size 12345 is no good");
    ublk_ctl_reply_free(&c.rep);
    assert_int_equal(h.calls, 2);

    /* A client that expects another daemon (pid) does not talk to this one. */
    c = (Call){ .id = 5, .pid = getpid() + 1, .req = { .op = UBLK_CTL_RESIZE, .size = M } };
    run_call(ctx, &c);
    assert_int_equal(c.ret, -1);
    assert_non_null(strstr(c.err, "not by device 5's daemon"));

    /* Garbage, another version and an endless line are answered, not handled. */
    char *r = raw_call(ctx, path, "hello\n");
    assert_non_null(strstr(r, "\"ok\":false"));
    assert_non_null(strstr(r, "not a JSON object"));
    free(r);
    r = raw_call(ctx, path, "{\"ublkd-ctl\":3,\"op\":\"resize\",\"size\":4096}\n");
    assert_non_null(strstr(r, "version 3"));
    free(r);
    char *big = malloc(UBLK_CTL_MAX_MSG + 200);
    memset(big, 'x', UBLK_CTL_MAX_MSG + 199);
    big[UBLK_CTL_MAX_MSG + 199] = 0;
    r = raw_call(ctx, path, big);
    assert_non_null(strstr(r, "longer than 4096"));
    free(r);
    free(big);
    /* A request without its newline is read up to the peer's end. */
    r = raw_call(ctx, path, "{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":8192}");
    assert_non_null(strstr(r, "\"ok\":true"));
    free(r);
    assert_int_equal(h.calls, 3);
    assert_int_equal(ublk_ctl_server_refused(s), 0);
    /* A peer that connects and sends nothing is cut off (5 s on the
     * loop's clock, here a virtual one), so it cannot hold the socket. */
    vclock_ns = 1000000000LL;
    aio_context_set_clock(ctx, vclock, NULL);
    int64_t t0 = vclock_ns;
    r = raw_call_ticking(ctx, path, "", 10000000LL);   /* 10 ms per poll */
    assert_string_equal(r, "");
    free(r);
    assert_true(vclock_ns - t0 >= 5000000000LL);
    aio_context_set_clock(ctx, NULL, NULL);
    assert_false(ublk_ctl_server_busy(s));
    assert_int_equal(h.calls, 3);
    c = (Call){ .id = 5, .pid = getpid(), .req = { .op = UBLK_CTL_RESIZE, .size = 2 * M } };
    run_call(ctx, &c);                  /* and the socket serves the next one */
    assert_int_equal(c.ret, 0);
    assert_true(c.rep.ok && c.rep.size == 2 * M);
    assert_int_equal(h.calls, 4);

    /* Another uid is refused by the daemon itself (needs root to become
     * one; the run directory keeps it out, so it comes through a link). */
    if (geteuid() == 0) {
        char link_dir[400], lpath[450];
        snprintf(link_dir, sizeof(link_dir), "%s/open", dir);
        snprintf(lpath, sizeof(lpath), "%s/s.sock", link_dir);
        assert_int_equal(mkdir(link_dir, 0755), 0);
        assert_int_equal(chmod(dir, 0755), 0);
        assert_int_equal(link(path, lpath), 0);
        assert_int_equal(chmod(lpath, 0666), 0);
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
            close(pfd[0]);
            char out[4096] = "";
            if (setresgid(65534, 65534, 65534) == 0 && setresuid(65534, 65534, 65534) == 0) {
                int fd = socket(AF_UNIX, SOCK_STREAM, 0);
                struct sockaddr_un la = { .sun_family = AF_UNIX };
                memcpy(la.sun_path, lpath, strlen(lpath) + 1);
                if (connect(fd, (struct sockaddr *)&la, sizeof(la)) == 0) {
                    const char *req = "{\"ublkd-ctl\":1,\"op\":\"resize\",\"size\":4096}\n";
                    ssize_t w = send(fd, req, strlen(req), MSG_NOSIGNAL);
                    (void)w;
                    ssize_t n = recv(fd, out, sizeof(out) - 1, 0);
                    out[n > 0 ? n : 0] = 0;
                } else {
                    snprintf(out, sizeof(out), "connect: %s", strerror(errno));
                }
            } else {
                snprintf(out, sizeof(out), "setresuid: %s", strerror(errno));
            }
            ssize_t w = write(pfd[1], out, strlen(out) + 1);
            (void)w;
            _exit(0);
        }
        close(pfd[1]);
        fcntl(pfd[0], F_SETFL, O_NONBLOCK);
        char got[4096];
        ssize_t n;
        while ((n = read(pfd[0], got, sizeof(got) - 1)) < 0 && errno == EAGAIN) {
            aio_poll(ctx, false);
            usleep(1000);
        }
        close(pfd[0]);
        waitpid(child, NULL, 0);
        got[n > 0 ? n : 0] = 0;
        if (!strstr(got, "uid 65534 is neither root nor the daemon's user (uid 0)") ||
            !strstr(got, "\"ok\":false")) {
            fail_msg("uid 65534 was not refused: '%s'", got);
        }
        assert_int_equal(ublk_ctl_server_refused(s), 1);
        assert_int_equal(h.calls, 4);          /* never handled */
        unlink(lpath);
        rmdir(link_dir);
    } else {
        print_message("not root: another uid's refusal is left to tests/vm/test_resize.sh\n");
    }

    ublk_ctl_server_free(s);
    assert_int_equal(lstat(path, &st), -1);   /* its name goes with it */
    /* ... but not a name that another took over since. */
    s = ublk_ctl_server_new(ctx, 6, handler, &h, &err);
    assert_non_null(s);
    snprintf(path, sizeof(path), "%s/6.sock", run);
    assert_int_equal(unlink(path), 0);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    ublk_ctl_server_free(s);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));

    unsetenv("UBLKD_RUN_DIR");
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip),
        cmocka_unit_test(test_request_refusals),
        cmocka_unit_test(test_reply_round_trip),
        cmocka_unit_test(test_quorum_request),
        cmocka_unit_test(test_snapshot_request),
        cmocka_unit_test(test_peer_allowed),
        cmocka_unit_test(test_resize_check),
        cmocka_unit_test(test_socket_end_to_end),
    };
    return cmocka_run_group_tests_name("ublk-ctlsock", tests, NULL, NULL);
}
#else
/* Built without the ublk server (CONFIG_UBLK=n): nothing to test. */
int main(void)
{
    return 0;
}
#endif
