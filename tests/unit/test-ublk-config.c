/*
 * test-ublk-config.c - `ublkd add` argument parsing, the graph options it
 * builds, the UBLK_F_* flags it asks for, and the state file round trip;
 * hostile values for every add option, recovery modes the kernel lacks,
 * --log paths, throttling.group; state files with fields of the wrong type
 * or range.
 * None of this needs the ublk driver.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#ifdef CONFIG_UBLK
#include "ublk.h"
#ifdef CONFIG_CRYPTO
#include "crypto.h"
#endif
#ifdef CONFIG_NBD
#include "nbd-tls.h"
#endif

static int parse(UblkDevConfig *c, const char *line, Error **errp)
{
    char *copy = strdup(line), *argv[64], *save = NULL;
    int argc = 0;
    for (char *t = strtok_r(copy, " ", &save); t && argc < 63; t = strtok_r(NULL, " ", &save)) {
        argv[argc++] = t;
    }
    argv[argc] = NULL;
    ublk_dev_config_init(c);
    int ret = ublk_dev_config_parse(c, argc, argv, errp);
    free(copy);
    return ret;
}

static void expect_error(const char *line, const char *needle)
{
    UblkDevConfig c;
    Error *err = NULL;
    assert_int_equal(parse(&c, line, &err), -1);
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), needle)) {
        fail_msg("'%s': message '%s' lacks '%s'", line, error_get_pretty(err), needle);
    }
    error_free(err);
    ublk_dev_config_free(&c);
}

static void test_defaults(void **state)
{
    (void)state;
    UblkDevConfig c;
    assert_int_equal(parse(&c, "add raw disk.img", NULL), 0);
    assert_string_equal(c.type, "raw");
    assert_int_equal(c.nfiles, 1);
    assert_string_equal(c.files[0], "disk.img");
    assert_int_equal(c.dev_id, -1);
    assert_int_equal(c.nr_queues, 1);
    assert_int_equal(c.depth, 128);
    assert_int_equal(c.max_io_size, 512 * 1024);
    assert_int_equal(c.recovery, UBLK_RECOVERY_REISSUE);
    assert_int_equal(c.affinity, UBLK_AFFINITY_NONE);
    assert_false(c.foreground);
    ublk_dev_config_free(&c);
}

static void test_options(void **state)
{
    (void)state;
    UblkDevConfig c;
    Error *err = NULL;
    assert_int_equal(parse(&c, "add -n 5 -q 2 -d 4096 --logical-block-size 4k "
                               "--physical-block-size 8k --io-opt 64k --max-io-size 1M "
                               "--read-only --rotational -u --affinity=queue --recovery fail "
                               "--cache writeback --foreground --log /tmp/x.log vdi a.vdi", &err), 0);
    assert_null(err);
    assert_int_equal(c.dev_id, 5);
    assert_int_equal(c.nr_queues, 2);
    assert_int_equal(c.depth, 4096);
    assert_int_equal(c.logical_bs, 4096);
    assert_int_equal(c.physical_bs, 8192);
    assert_int_equal(c.io_opt, 65536);
    assert_int_equal(c.max_io_size, 1 << 20);
    assert_true(c.read_only && c.rotational && c.user_copy && c.foreground);
    assert_int_equal(c.affinity, UBLK_AFFINITY_QUEUE);
    assert_int_equal(c.recovery, UBLK_RECOVERY_FAIL);
    assert_string_equal(c.cache, "writeback");
    assert_string_equal(c.log_file, "/tmp/x.log");
    assert_string_equal(c.type, "vdi");
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add null --size 1G", NULL), 0);
    assert_int_equal(c.size, 1ULL << 30);
    ublk_dev_config_free(&c);

    /* ublksrv's and rublk's spelling: -t TYPE -f FILE; -f is not --foreground */
    assert_int_equal(parse(&c, "add -t vdi -f a.vdi -q 2 -d 64 -n 3", NULL), 0);
    assert_string_equal(c.type, "vdi");
    assert_int_equal(c.nfiles, 1);
    assert_string_equal(c.files[0], "a.vdi");
    assert_int_equal(c.nr_queues, 2);
    assert_false(c.foreground);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add -t quorum -f a.img -f b.img -f c.img", NULL), 0);
    assert_int_equal(c.nfiles, 3);
    /* Without a threshold the add fails before any device exists, saying
     * how to give one. */
    Error *qerr = NULL;
    int qflags = 0;
    assert_null(ublk_dev_config_to_options(&c, &qflags, &qerr));
    assert_non_null(qerr);
    assert_non_null(strstr(error_get_pretty(qerr), "needs -o vote-threshold=K"));
    assert_non_null(strstr(error_get_pretty(qerr), "(1..3; 2 is a majority)"));
    error_free(qerr);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add -t quorum -f a.img -f b.img -f c.img -o vote-threshold=2",
                           NULL), 0);
    OptDict *qo = ublk_dev_config_to_options(&c, &qflags, NULL);
    assert_non_null(qo);
    assert_string_equal(optdict_get(qo, "children.2.file.filename"), "c.img");
    assert_string_equal(optdict_get(qo, "vote-threshold"), "2");
    optdict_free(qo);
    ublk_dev_config_free(&c);

    /* null without --size: 250 GiB, as ublksrv's null target */
    assert_int_equal(parse(&c, "add -t null", NULL), 0);
    int flags = 0;
    OptDict *o = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_non_null(o);
    assert_string_equal(optdict_get(o, "size"), "268435456000");
    optdict_free(o);
    ublk_dev_config_free(&c);

    /* -r is recovery, as for ublksrv and rublk; read-only is --read-only. */
    assert_int_equal(parse(&c, "add -r raw a.img", NULL), 0);
    assert_int_equal(c.recovery, UBLK_RECOVERY_FAIL);
    assert_false(c.read_only);
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add --blockdev driver=raw,file.filename=x.img", NULL), 0);
    assert_null(c.type);
    assert_string_equal(c.blockdev, "driver=raw,file.filename=x.img");
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add --help", NULL), 1);
    ublk_dev_config_free(&c);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    expect_error("add raw a.img -q 0", "--queues 0");
    expect_error("add raw a.img -d 5000", "--depth 5000");
    expect_error("add raw a.img -d 0", "--depth 0");
    expect_error("add raw a.img -d x", "expected a number");
    expect_error("add raw", "missing FILE");
    expect_error("add", "missing TYPE");
    expect_error("add -f a.img", "missing TYPE");
    expect_error("add null --size 0", "greater than 0");
    expect_error("add raw a.img --logical-block-size 1000", "power of two");
    expect_error("add raw a.img --logical-block-size 8192", "512 to 4096");
    expect_error("add raw a.img --logical-block-size 4096 --physical-block-size 512", "smaller");
    expect_error("add raw a.img --max-io-size 1000", "multiple of 4096");
    expect_error("add raw a.img --max-io-size 64M", "between 4k and 32M");
    expect_error("add raw a.img -u -g", "exclude");
    expect_error("add raw a.img b.img", "one file");
    expect_error("add --blockdev driver=raw raw a.img", "replaces TYPE");
    expect_error("add raw a.img --affinity=sometimes", "--affinity");
    expect_error("add raw a.img --recovery=maybe", "--recovery");
    expect_error("add raw a.img --discard=later", "--discard");
    expect_error("add raw a.img -n 99999999", "too large");
    expect_error("add raw a.img --frobnicate", "unknown option");
    expect_error("add raw a.img -x", "unknown option '-x'");
    expect_error("add raw a.img --cache", "option '--cache' needs a value");
    expect_error("add raw a.img --depth", "option '--depth' needs a value");
    expect_error("add raw a.img -q", "option '-q' needs a value");
    expect_error("add raw a.img --read-only=yes", "'--read-only=yes' is unknown or takes no value");
}

static void test_flags(void **state)
{
    (void)state;
    UblkDevConfig c;
    const uint64_t all = UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY |
                         UBLK_F_USER_RECOVERY_REISSUE | UBLK_F_USER_RECOVERY_FAIL_IO |
                         UBLK_F_USER_COPY | UBLK_F_UNPRIVILEGED_DEV | UBLK_F_NEED_GET_DATA;
    assert_int_equal(parse(&c, "add raw a.img", NULL), 0);
    assert_int_equal(ublk_dev_config_flags(&c, all, false),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE);
    /* Unprivileged devices: no recovery (the kernel refuses it). */
    assert_int_equal(ublk_dev_config_flags(&c, all, true),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_UNPRIVILEGED_DEV);
    /* An old kernel without ioctl encoding or recovery. */
    assert_int_equal(ublk_dev_config_flags(&c, UBLK_F_NEED_GET_DATA, false), 0);
    c.recovery = UBLK_RECOVERY_FAIL_IO;
    assert_int_equal(ublk_dev_config_flags(&c, all, false),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO);
    assert_int_equal(ublk_dev_config_flags(&c, all & ~UBLK_F_USER_RECOVERY_FAIL_IO, false),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY);
    /* QUIESCE (for upgrade) with any recovery mode the kernel takes, never
     * without USER_RECOVERY (ADD_DEV would refuse it) or unprivileged. */
    c.recovery = UBLK_RECOVERY_REISSUE;
    assert_int_equal(ublk_dev_config_flags(&c, all | UBLK_F_QUIESCE, false),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY |
                     UBLK_F_USER_RECOVERY_REISSUE | UBLK_F_QUIESCE);
    assert_int_equal(ublk_dev_config_flags(&c, all | UBLK_F_QUIESCE, true),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_UNPRIVILEGED_DEV);
    c.recovery = UBLK_RECOVERY_FAIL;
    assert_int_equal(ublk_dev_config_flags(&c, all | UBLK_F_QUIESCE, false),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY | UBLK_F_QUIESCE);
    c.recovery = UBLK_RECOVERY_NONE;
    assert_int_equal(ublk_dev_config_flags(&c, all | UBLK_F_QUIESCE, false),
                     UBLK_F_CMD_IOCTL_ENCODE);
    c.user_copy = true;
    assert_int_equal(ublk_dev_config_flags(&c, all, false),
                     UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_COPY);
    ublk_dev_config_free(&c);
}

static void test_graph_options(void **state)
{
    (void)state;
    UblkDevConfig c;
    int flags = 0;
    assert_int_equal(parse(&c, "add raw /x/a.img -o detect-zeroes=on", NULL), 0);
    OptDict *d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_non_null(d);
    assert_string_equal(optdict_get(d, "driver"), "raw");
    assert_string_equal(optdict_get(d, "file.filename"), "/x/a.img");
    assert_string_equal(optdict_get(d, "detect-zeroes"), "on");
    assert_true(flags & BDRV_O_RDWR);
    assert_true(flags & BDRV_O_UNMAP);
    assert_true(flags & BDRV_O_NOCACHE);     /* cache=none is the device default */
    optdict_free(d);
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add null --size 64M --read-only --discard ignore --cache writeback", NULL), 0);
    d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_non_null(d);
    assert_string_equal(optdict_get(d, "driver"), "null");
    assert_string_equal(optdict_get(d, "size"), "67108864");
    assert_false(flags & BDRV_O_RDWR);
    assert_false(flags & BDRV_O_UNMAP);
    assert_false(flags & BDRV_O_NOCACHE);
    optdict_free(d);
    ublk_dev_config_free(&c);

    /* qcow2 devices keep completed writes' metadata in the file (a daemon
     * may be killed and recovered); the user can still say otherwise */
    assert_int_equal(parse(&c, "add qcow2 /x/a.qcow2", NULL), 0);
    d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_string_equal(optdict_get(d, "metadata-write-through"), "on");
    optdict_free(d);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --blockdev driver=qcow2,file.filename=/x/a.qcow2,"
                               "metadata-write-through=off", NULL), 0);
    d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_string_equal(optdict_get(d, "metadata-write-through"), "off");
    optdict_free(d);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add raw /x/a.img", NULL), 0);
    d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_null(optdict_get(d, "metadata-write-through"));
    optdict_free(d);
    ublk_dev_config_free(&c);

    Error *err = NULL;
    assert_int_equal(parse(&c, "add raw a.img --cache bogus", NULL), 0);
    assert_null(ublk_dev_config_to_options(&c, &flags, &err));
    assert_non_null(strstr(error_get_pretty(err), "--cache"));
    error_free(err);
    ublk_dev_config_free(&c);
}

static void test_state_round_trip(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    UblkDevState s = { 0 }, r;
    Error *err = NULL;
    assert_int_equal(parse(&s.cfg, "add -n 3 -q 2 -d 64 --cache writeback --logical-block-size 4096 "
                                   "--recovery fail-io --affinity queue -o a=b raw /img/a b.raw", &err), -1);
    error_free(err);
    err = NULL;
    ublk_dev_config_free(&s.cfg);
    assert_int_equal(parse(&s.cfg, "add -n 3 -q 2 -d 64 --cache writeback --logical-block-size 4096 "
                                   "--recovery fail-io --affinity queue -o a=b -g raw /img/a,b.raw", &err), 0);
    s.dev_id = 3;
    s.pid = 4242;
    s.start_time = 1ULL << 40;
    s.flags = UBLK_F_USER_RECOVERY | UBLK_F_CMD_IOCTL_ENCODE;
    s.nr_queues = 2;
    s.depth = 64;
    s.graph = strdup("driver=raw,file.driver=file,file.filename=/img/a,,b.raw");
    s.bdev = strdup("/dev/ublkb3");
    s.size = (1LL << 40) + 4096;   /* what a resize recorded */
    char *json = ublk_dev_state_to_json(&s);
    assert_non_null(json);
    assert_int_equal(ublk_dev_state_from_json(json, &r, &err), 0);
    assert_null(err);
    assert_int_equal(r.dev_id, 3);
    assert_int_equal(r.pid, 4242);
    assert_true(r.start_time == 1ULL << 40);
    assert_int_equal(r.flags, s.flags);
    assert_int_equal(r.nr_queues, 2);
    assert_int_equal(r.depth, 64);
    assert_string_equal(r.graph, s.graph);
    assert_string_equal(r.bdev, "/dev/ublkb3");
    assert_true(r.size == (1LL << 40) + 4096);
    assert_int_equal(r.cfg.dev_id, 3);
    assert_string_equal(r.cfg.type, "raw");
    assert_int_equal(r.cfg.nfiles, 1);
    assert_string_equal(r.cfg.files[0], "/img/a,b.raw");
    assert_string_equal(r.cfg.cache, "writeback");
    assert_string_equal(r.cfg.extra_opts, "a=b");
    assert_int_equal(r.cfg.logical_bs, 4096);
    assert_int_equal(r.cfg.recovery, UBLK_RECOVERY_FAIL_IO);
    assert_int_equal(r.cfg.affinity, UBLK_AFFINITY_QUEUE);
    assert_true(r.cfg.need_get_data);
    assert_int_equal(r.cfg.nr_queues, 2);
    assert_int_equal(r.cfg.depth, 64);
    assert_int_equal(r.cfg.per_io_threads, 0);
    free(json);
    ublk_dev_state_free(&r);
    ublk_dev_state_free(&s);

    assert_int_equal(ublk_dev_state_from_json("{\"id\": 1}", &r, &err), -1);
    assert_non_null(err);
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_dev_state_from_json("not json", &r, &err), -1);
    error_free(err);
    err = NULL;
    /* A hand-edited file with an impossible depth is refused, not trusted. */
    assert_int_equal(ublk_dev_state_from_json("{\"config\": {\"type\": \"raw\", \"files\": [\"a\"],"
                                              " \"depth\": 9999}}", &r, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "--depth"));
    error_free(err);
#else
    skip();
#endif
}

/* --object: what add keeps (survives the state file for recover and
 * upgrade), what it refuses (a secret's data=, which the state file would
 * hold), and the registration where the graph is opened. */
static void test_objects(void **state)
{
    (void)state;
#if defined(CONFIG_JSON) && defined(CONFIG_CRYPTO) && defined(CONFIG_NBD)
    char dir[] = "/tmp/ublkd-objtest.XXXXXX", pw[64], line[512];
    assert_non_null(mkdtemp(dir));
    snprintf(pw, sizeof(pw), "%s/pw", dir);
    FILE *f = fopen(pw, "w");
    assert_non_null(f);
    fputs("hunter2-passphrase", f);
    fclose(f);
    UblkDevState s = { 0 }, r;
    Error *err = NULL;
    snprintf(line, sizeof(line), "add --object tls-creds-psk,id=tls0,dir=%s,endpoint=client "
             "--object secret,id=sec0,file=%s --blockdev driver=raw,file.driver=nbd,"
             "file.server.type=unix,file.server.path=/x.sock,file.tls-creds=tls0", dir, pw);
    assert_int_equal(parse(&s.cfg, line, &err), 0);
    assert_null(err);
    assert_int_equal(s.cfg.nobjects, 2);
    char *json = ublk_dev_state_to_json(&s);
    assert_non_null(json);
    assert_null(strstr(json, "hunter2"));      /* the path, never the secret */
    assert_non_null(strstr(json, "secret,id=sec0,file="));
    assert_int_equal(ublk_dev_state_from_json(json, &r, &err), 0);
    assert_null(err);
    assert_int_equal(r.cfg.nobjects, 2);
    assert_string_equal(r.cfg.objects[0], s.cfg.objects[0]);
    assert_string_equal(r.cfg.objects[1], s.cfg.objects[1]);
    free(json);

    /* The recovered config registers both; a second graph of the same
     * device (a quorum change) finds them there. */
    int flags;
    for (int i = 0; i < 2; i++) {
        OptDict *d = ublk_dev_config_to_options(&r.cfg, &flags, &err);
        assert_null(err);
        assert_non_null(d);
        optdict_free(d);
    }
    const NbdTlsCreds *tc = nbd_tls_lookup("tls0", &err);
    assert_non_null(tc);
    assert_true(tc->psk);
    assert_string_equal(tc->dir, dir);
    size_t len;
    const uint8_t *sv = secret_lookup("sec0", &len, &err);
    assert_non_null(sv);
    assert_int_equal(len, strlen("hunter2-passphrase"));
    assert_memory_equal(sv, "hunter2-passphrase", len);
    ublk_dev_state_free(&r);
    ublk_dev_state_free(&s);
    nbd_tls_clear_all();
    secret_clear_all();

    /* What the registry refuses comes back from to_options, named. */
    assert_int_equal(parse(&s.cfg, "add --object tls-creds-x509,id=t1,dir=/k,endpoint=server "
                                   "raw /a", &err), 0);
    OptDict *d = ublk_dev_config_to_options(&s.cfg, &flags, &err);
    assert_null(d);
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), "--object: "));
    assert_non_null(strstr(error_get_pretty(err), "endpoint=client"));
    error_free(err);
    err = NULL;
    ublk_dev_config_free(&s.cfg);
    assert_null(nbd_tls_lookup("t1", &err));
    error_free(err);
    err = NULL;
    /* A missing secret file likewise. */
    snprintf(line, sizeof(line), "add --object secret,id=s9,file=%s/none raw /a", dir);
    assert_int_equal(parse(&s.cfg, line, &err), 0);
    assert_null(ublk_dev_config_to_options(&s.cfg, &flags, &err));
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), "--object: "));
    error_free(err);
    err = NULL;
    ublk_dev_config_free(&s.cfg);

    expect_error("add --object secret,id=s0,data=hunter2 raw /a", "data= is refused");
    expect_error("add --object secret,id=s0 raw /a", "file=PATH is missing");
    expect_error("add --object secret,file=/pw raw /a", "'id' is missing");
    expect_error("add --object iothread,id=io0 raw /a", "not supported by ublkd add");
    expect_error("add --object tls-creds-psk,id=a,dir=/k --object secret,id=a,file=/pw raw /a",
                 "two objects have the id 'a'");
    expect_error("add --object secret,id=ublkd-key-file,file=/pw raw /a", "--key-file uses");
    expect_error("add --object secret,id=s0,file raw /a", "--object");

    /* A hand-edited state file cannot smuggle a secret's value in either. */
    assert_int_equal(ublk_dev_state_from_json("{\"config\": {\"type\": \"raw\", \"files\": "
                                              "[\"/a\"], \"objects\": [\"secret,id=x,data=pw\"]}}",
                                              &r, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "data= is refused"));
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"config\": {\"type\": \"raw\", \"files\": "
                                              "[\"/a\"], \"objects\": \"secret\"}}", &r, &err),
                     -1);
    assert_non_null(strstr(error_get_pretty(err), "objects"));
    error_free(err);
    unlink(pw);
    rmdir(dir);
#else
    skip();
#endif
}

/* `ublkd list`'s remote children: one entry per nbd node, named as options
 * name it, from the flag-per-state counters the nbd driver publishes. */
static void test_remote_nodes(void **state)
{
    (void)state;
    static const struct { const char *k; uint64_t v; } in[] = {
        { "children.0.reads", 5 },
        { "children.0/file/nbd-connected", 1 }, { "children.0/file/nbd-reconnecting", 0 },
        { "children.0/file/nbd-failed", 0 }, { "children.0/file/nbd-reconnects", 2 },
        { "children.1.reads", 4 },
        { "children.1/nbd-connected", 0 }, { "children.1/nbd-reconnecting", 1 },
        { "children.1/nbd-failed", 0 }, { "children.1/nbd-reconnects", 3 },
        { "nbd-connected", 0 }, { "nbd-reconnecting", 0 }, { "nbd-failed", 1 },
        { "nbd-reconnects", 7 },
        { "file/nbdx", 9 },           /* not an nbd counter */
    };
    BlockAcctStats *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    for (size_t i = 0; i < ARRAY_SIZE(in); i++) {
        snprintf(st->node_counters[i].key, sizeof(st->node_counters[i].key), "%s", in[i].k);
        st->node_counters[i].value = in[i].v;
        st->n_node_counters++;
    }
    UblkRemoteNode rn[8];
    assert_int_equal(ublk_stats_remote_nodes(st, rn, 8), 3);
    assert_string_equal(rn[0].node, "children.0.file");
    assert_string_equal(rn[0].driver, "nbd");
    assert_string_equal(rn[0].state, "connected");
    assert_int_equal(rn[0].reconnects, 2);
    assert_string_equal(rn[1].node, "children.1");
    assert_string_equal(rn[1].state, "reconnecting");
    assert_int_equal(rn[1].reconnects, 3);
    assert_string_equal(rn[2].node, "");
    assert_string_equal(rn[2].state, "failed");
    assert_int_equal(rn[2].reconnects, 7);
    /* max is kept to */
    assert_int_equal(ublk_stats_remote_nodes(st, rn, 1), 1);
    assert_string_equal(rn[0].node, "children.0.file");
    assert_true(ublk_stats_is_remote_counter("children.1/nbd-failed"));
    assert_false(ublk_stats_is_remote_counter("children.1.reads"));
    assert_false(ublk_stats_is_remote_counter("file/nbdx"));
    free(st);
}

static void test_state_files(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    char dir[] = "/tmp/ublkd-unit.XXXXXX";
    assert_non_null(mkdtemp(dir));
    setenv("UBLKD_RUN_DIR", dir, 1);
    assert_string_equal(ublk_run_dir(), dir);
    UblkDevState s = { 0 }, r;
    assert_int_equal(parse(&s.cfg, "add null --size 1M", NULL), 0);
    s.dev_id = 12;
    s.pid = 1;
    assert_int_equal(ublk_state_write(&s, NULL), 0);
    assert_int_equal(ublk_state_read(12, &r, NULL), 0);
    assert_int_equal(r.cfg.size, 1 << 20);
    ublk_dev_state_free(&r);
    BlockAcctStats st = { 0 }, st2;
    st.ops[BLK_OP_READ] = 5;
    st.bytes[BLK_OP_WRITE] = 1ULL << 40;
    st.errors[BLK_OP_FLUSH] = 2;
    st.fua_writes = 3;
    st.total_ns[BLK_OP_READ] = 123456789012345ULL;   /* > 2^32: no truncation */
    st.events = 4;
    st.events_suppressed = 9;
    snprintf(st.node_counters[0].key, sizeof(st.node_counters[0].key), "children.0.reads");
    st.node_counters[0].value = 7;
    snprintf(st.node_counters[1].key, sizeof(st.node_counters[1].key), "file/children.1.errors");
    st.node_counters[1].value = 1ULL << 33;
    st.n_node_counters = 2;
    assert_int_equal(ublk_stats_write(12, &st), 0);
    assert_int_equal(ublk_stats_read(12, &st2), 0);
    assert_memory_equal(&st, &st2, sizeof(st));
    ublk_state_remove(12);
    Error *err = NULL;
    assert_int_equal(ublk_state_read(12, &r, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "no state for device 12"));
    error_free(err);
    ublk_dev_state_free(&s);
    rmdir(dir);
    unsetenv("UBLKD_RUN_DIR");
#else
    skip();
#endif
}

/* A process's start time: ours is stable, a child's differs from nobody's. */
static void test_proc_start_time(void **state)
{
    (void)state;
    uint64_t me = ublk_proc_start_time(getpid());
    assert_true(me > 0);
    assert_true(ublk_proc_start_time(getpid()) == me);
    assert_true(ublk_proc_start_time(0) == 0);
    assert_true(ublk_proc_start_time(-1) == 0);
    assert_true(ublk_proc_start_time(1 << 30) == 0);     /* beyond pid_max */
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *slurp(const char *path)
{
    static char buf[256];
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* Issue #10 item 2: run directories and state files nobody else controls. */
static void test_run_dir_trust(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    char top[] = "/tmp/ublkd-unit.XXXXXX", dir[300], path[400], victim[400];
    assert_non_null(mkdtemp(top));
    snprintf(dir, sizeof(dir), "%s/run", top);
    snprintf(victim, sizeof(victim), "%s/victim", top);
    setenv("UBLKD_RUN_DIR", dir, 1);
    Error *err = NULL;

    /* Missing: made 0700 by a writer. */
    int fd = ublk_run_dir_open(false, &err);
    assert_int_equal(fd, -1);
    assert_int_equal(error_get_errno(err), ENOENT);
    error_free(err);
    err = NULL;
    fd = ublk_run_dir_open(true, NULL);
    assert_true(fd >= 0);
    close(fd);
    struct stat st;
    assert_int_equal(lstat(dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);

    /* An older ublkd's 0755 directory is ours: made private, not refused. */
    chmod(dir, 0755);
    fd = ublk_run_dir_open(false, NULL);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(lstat(dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);

    /* Writable by others: refused, naming it. */
    chmod(dir, 0777);
    assert_int_equal(ublk_run_dir_open(true, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), dir));
    assert_non_null(strstr(error_get_pretty(err), "writable by others"));
    error_free(err);
    err = NULL;
    UblkDevState s = { 0 }, r;
    assert_int_equal(parse(&s.cfg, "add null --size 1M", NULL), 0);
    s.dev_id = 4;
    assert_int_equal(ublk_state_write(&s, &err), -1);
    error_free(err);
    err = NULL;
    chmod(dir, 0700);

    /* A symlink at the statistics file's temporary name is replaced, never
     * written through. */
    write_text(victim, "precious\n");
    snprintf(path, sizeof(path), "%s/4.stats.json.tmp%d", dir, (int)getpid());
    assert_int_equal(symlink(victim, path), 0);
    BlockAcctStats bs = { 0 };
    assert_int_equal(ublk_stats_write(4, &bs), 0);
    assert_string_equal(slurp(victim), "precious\n");
    assert_int_equal(lstat(path, &st), -1);
    snprintf(path, sizeof(path), "%s/4.stats.json", dir);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* A state file that is a symlink, malformed, or for another id: -2. */
    snprintf(path, sizeof(path), "%s/5.json", dir);
    assert_int_equal(ublk_state_write(&s, NULL), 0);       /* 4.json */
    snprintf(victim, sizeof(victim), "%s/4.json", dir);
    assert_int_equal(symlink(victim, path), 0);
    assert_int_equal(ublk_state_read(5, &r, &err), -2);
    assert_non_null(strstr(error_get_pretty(err), "symlink"));
    error_free(err);
    err = NULL;
    unlink(path);
    assert_int_equal(link(victim, path), 0);               /* says id 4 */
    assert_int_equal(ublk_state_read(5, &r, &err), -2);
    assert_non_null(strstr(error_get_pretty(err), "device 4"));
    error_free(err);
    err = NULL;
    unlink(path);
    write_text(path, "{\"pid\": 1");
    assert_int_equal(ublk_state_read(5, &r, &err), -2);
    assert_non_null(strstr(error_get_pretty(err), "ignored"));
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_state_read(4, &r, NULL), 0);
    ublk_dev_state_free(&r);
    /* Another user's (root can plant one to try it). */
    if (geteuid() == 0) {
        assert_int_equal(chown(victim, 65534, 65534), 0);
        assert_int_equal(ublk_state_read(4, &r, &err), -2);
        assert_non_null(strstr(error_get_pretty(err), "another user"));
        error_free(err);
        err = NULL;
        /* and a run directory that is another user's */
        assert_int_equal(chown(dir, 65534, 65534), 0);
        assert_int_equal(ublk_run_dir_open(false, &err), -1);
        assert_non_null(strstr(error_get_pretty(err), "belongs to uid 65534"));
        error_free(err);
        err = NULL;
        assert_int_equal(chown(dir, 0, 0), 0);
    }
    ublk_state_remove(4);
    unlink(path);
    snprintf(path, sizeof(path), "%s/4.stats.json", dir);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);

    /* A symlink at the directory's own name: refused. */
    assert_int_equal(symlink(top, dir), 0);
    assert_int_equal(ublk_run_dir_open(true, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "symlink"));
    error_free(err);
    unlink(dir);
    snprintf(path, sizeof(path), "%s/victim", top);
    unlink(path);
    assert_int_equal(rmdir(top), 0);
    ublk_dev_state_free(&s);
    unsetenv("UBLKD_RUN_DIR");
#else
    skip();
#endif
}

/* Every option that takes a value, with hostile values: each is a clean
 * error (no crash, no sanitizer report, no value silently changed). */
static void test_hostile_values(void **state)
{
    (void)state;
    static const char *const opts[] = {
        "--id", "--queues", "--depth", "--size", "--logical-block-size",
        "--physical-block-size", "--io-opt", "--max-io-size", "--discard-granularity",
        "--max-discard", "--recovery", "--affinity", "--discard", "--per-io-threads",
    };
    static const char *const values[] = {
        "9223372036854775807", "9223372036854775808", "18446744073709551615",
        "18446744073709551616", "-1", "-0", "8E", "16E", "1Z", "", " ", "x", "0x", "1.5.5",
        "nan", "NaN", "inf", "-inf", "1e9999", "4k4", "12345678901234567890123456789",
    };
    char longval[5000];
    memset(longval, '9', sizeof(longval) - 1);
    longval[sizeof(longval) - 1] = 0;
    for (size_t o = 0; o < sizeof(opts) / sizeof(opts[0]); o++) {
        for (size_t v = 0; v <= sizeof(values) / sizeof(values[0]); v++) {
            const char *val = v < sizeof(values) / sizeof(values[0]) ? values[v] : longval;
            char *argv[] = { "add", "null", "--size", "1M", (char *)opts[o], (char *)val, NULL };
            UblkDevConfig c;
            Error *err = NULL;
            ublk_dev_config_init(&c);
            int ret = ublk_dev_config_parse(&c, 6, argv, &err);
            if (ret != -1 || !err) {
                fail_msg("add null --size 1M %s '%.40s' was accepted", opts[o], val);
            }
            error_free(err);
            ublk_dev_config_free(&c);
        }
    }
    expect_error("add null --size 8E", "--size 8E is too large (at most 9223372036854775296 bytes)");
    expect_error("add null --size 16E", "invalid value for --size");
    char *argv[] = { "add", "raw", "a.img", "--log", "", NULL };
    UblkDevConfig c;
    Error *err = NULL;
    ublk_dev_config_init(&c);
    assert_int_equal(ublk_dev_config_parse(&c, 5, argv, &err), -1);
    assert_string_equal(error_get_pretty(err), "--log needs a file name");
    error_free(err);
    ublk_dev_config_free(&c);
    /* the largest --size that is accepted reaches the graph as it was given */
    assert_int_equal(parse(&c, "add null --size 9223372036854775296", NULL), 0);
    int flags;
    OptDict *d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_string_equal(optdict_get(d, "size"), "9223372036854775296");
    optdict_free(d);
    ublk_dev_config_free(&c);
}

/* An explicit recovery mode the kernel cannot honour is an error; the
 * default (reissue) falls back to what the kernel has. */
static void test_kernel_must_honour_recovery(void **state)
{
    (void)state;
    const uint64_t no_fail_io = UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY |
                                UBLK_F_USER_RECOVERY_REISSUE | UBLK_F_UNPRIVILEGED_DEV;
    UblkDevConfig c;
    Error *err = NULL;
    assert_int_equal(parse(&c, "add raw a.img --recovery=fail-io", NULL), 0);
    assert_int_equal(ublk_dev_config_check_kernel(&c, no_fail_io, false, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "lacks UBLK_F_USER_RECOVERY_FAIL_IO"));
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_dev_config_check_kernel(&c, no_fail_io | UBLK_F_USER_RECOVERY_FAIL_IO,
                                                  false, NULL), 0);
    assert_int_equal(ublk_dev_config_check_kernel(&c, no_fail_io, true, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "unprivileged"));
    error_free(err);
    err = NULL;
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add raw a.img -r", NULL), 0);
    assert_int_equal(ublk_dev_config_check_kernel(&c, UBLK_F_CMD_IOCTL_ENCODE, false, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "--recovery=fail: the kernel's ublk driver "
                           "lacks UBLK_F_USER_RECOVERY"));
    error_free(err);
    ublk_dev_config_free(&c);

    /* defaults and none never fail */
    assert_int_equal(parse(&c, "add raw a.img", NULL), 0);
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0, true, NULL), 0);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add raw a.img --recovery=none", NULL), 0);
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0, true, NULL), 0);
    ublk_dev_config_free(&c);
}

static void expect_log_error(const char *path, const char *needle)
{
    UblkDevConfig c;
    Error *err = NULL;
    ublk_dev_config_init(&c);
    c.log_file = strdup(path);
    assert_int_equal(ublk_dev_config_check_log(&c, &err), -1);
    if (!err || !strstr(error_get_pretty(err), needle)) {
        fail_msg("--log %s: '%s' lacks '%s'", path, err ? error_get_pretty(err) : "(none)",
                 needle);
    }
    error_free(err);
    ublk_dev_config_free(&c);
}

static void test_log_must_be_writable(void **state)
{
    (void)state;
    expect_log_error("/nonexistent/dir/log", "--log /nonexistent/dir/log: directory "
                     "/nonexistent/dir: No such file or directory");
    expect_log_error("/tmp", "is a directory");
    expect_log_error("/dev/null/x", "--log /dev/null/x: Not a directory");
    if (geteuid() != 0) {
        expect_log_error("/proc/x", "cannot create files in /proc");
    }
    char fifo[] = "/tmp/ublkd-fifo-XXXXXX";
    assert_non_null(mkdtemp(fifo));
    char *fifo_path = NULL;
    assert_true(asprintf(&fifo_path, "%s/f", fifo) > 0);
    assert_int_equal(mkfifo(fifo_path, 0600), 0);
    expect_log_error(fifo_path, "not a regular file or character device");
    unlink(fifo_path);
    rmdir(fifo);
    free(fifo_path);
    UblkDevConfig c;
    ublk_dev_config_init(&c);
    assert_int_equal(ublk_dev_config_check_log(&c, NULL), 0);       /* no --log */
    c.log_file = strdup("/dev/null");
    assert_int_equal(ublk_dev_config_check_log(&c, NULL), 0);
    free(c.log_file);
    char tmpl[] = "/tmp/ublkd-log-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    assert_true(asprintf(&c.log_file, "%s/new.log", tmpl) > 0);
    assert_int_equal(ublk_dev_config_check_log(&c, NULL), 0);       /* created later */
    assert_int_equal(access(c.log_file, F_OK), -1);                 /* not by the check */
    rmdir(tmpl);
    ublk_dev_config_free(&c);
}

/* Groups live in one process and each device is its own daemon. */
/* --zero-copy: what each mode asks the kernel for, and where on/register
 * must fail instead of quietly copying. */
static uint64_t zc_flags(const char *line, uint64_t supported, bool unpriv, bool needs_bytes,
                         const char *want_err)
{
    UblkDevConfig c;
    Error *err = NULL;
    uint64_t f = 0xdead;
    assert_int_equal(parse(&c, line, NULL), 0);
    int ret = ublk_dev_config_zero_copy_flags(&c, supported, unpriv, needs_bytes, &f, &err);
    if (want_err) {
        assert_int_equal(ret, -1);
        assert_non_null(err);
        if (!strstr(error_get_pretty(err), want_err)) {
            fail_msg("'%s': message '%s' lacks '%s'", line, error_get_pretty(err), want_err);
        }
        error_free(err);
    } else {
        assert_int_equal(ret, 0);
        assert_null(err);
    }
    ublk_dev_config_free(&c);
    return f;
}

static void test_zero_copy_modes(void **state)
{
    (void)state;
    const uint64_t k612 = 0x1fe, k615 = k612 | UBLK_F_SUPPORT_ZERO_COPY,
                   k73 = 0x1fffff;
    UblkDevConfig c;
    assert_int_equal(parse(&c, "add raw a", NULL), 0);
    assert_int_equal(c.zero_copy, UBLK_ZC_AUTO);
    ublk_dev_config_free(&c);
    for (int m = UBLK_ZC_AUTO; m <= UBLK_ZC_REGISTER; m++) {
        char line[64];
        snprintf(line, sizeof(line), "add --zero-copy=%s raw a", ublk_zero_copy_name(m));
        assert_int_equal(parse(&c, line, NULL), 0);
        assert_int_equal(c.zero_copy, m);
        ublk_dev_config_free(&c);
    }
    expect_error("add --zero-copy=yes raw a", "auto, on, off, register");
    expect_error("add --zero-copy=on -u raw a", "--user-copy");
    expect_error("add --zero-copy=register -g raw a", "--need-get-data");

    /* auto: the best the kernel has, else the copy path; AUTO_BUF_REG comes
     * with SUPPORT_ZERO_COPY, the NEED_REG_BUF fallback, where there is one */
    assert_true(zc_flags("add raw a", k612 | UBLK_F_AUTO_BUF_REG, false, false, NULL) ==
                UBLK_F_AUTO_BUF_REG);
    assert_true(zc_flags("add raw a", k73, false, false, NULL) == (UBLK_F_AUTO_BUF_REG | UBLK_F_SUPPORT_ZERO_COPY));
    assert_true(zc_flags("add raw a", k615, false, false, NULL) == UBLK_F_SUPPORT_ZERO_COPY);
    assert_true(zc_flags("add raw a", k612, false, false, NULL) == 0);
    assert_true(zc_flags("add raw a", k73, true, false, NULL) == 0);      /* unprivileged */
    assert_true(zc_flags("add raw a", k73, false, true, NULL) == 0);      /* all would bounce */
    assert_true(zc_flags("add -u raw a", k73, false, false, NULL) == 0);
    assert_true(zc_flags("add --zero-copy=off raw a", k73, false, false, NULL) == 0);
    /* on / register: what they ask for, or an error saying why not */
    assert_true(zc_flags("add --zero-copy=on raw a", k73, false, false, NULL) ==
                (UBLK_F_AUTO_BUF_REG | UBLK_F_SUPPORT_ZERO_COPY));
    assert_true(zc_flags("add --zero-copy=register raw a", k73, false, false, NULL) ==
                UBLK_F_SUPPORT_ZERO_COPY);
    assert_true(zc_flags("add --zero-copy=on raw a", k615, false, false, NULL) ==
                UBLK_F_SUPPORT_ZERO_COPY);
    zc_flags("add --zero-copy=on raw a", k612, false, false, "lacks zero copy");
    zc_flags("add --zero-copy=register raw a", k612, false, false, "needs Linux 6.15");
    zc_flags("add --zero-copy=on raw a", k73, false, true, "needs_mapped_data");
    /* unprivileged on/register ask the kernel (which refuses: ublk/server.c says so) */
    assert_true(zc_flags("add --zero-copy=on raw a", k73, true, false, NULL) ==
                (UBLK_F_AUTO_BUF_REG | UBLK_F_SUPPORT_ZERO_COPY));

#ifdef CONFIG_JSON
    UblkDevState s = { 0 }, r;
    assert_int_equal(parse(&s.cfg, "add --zero-copy=register raw a", NULL), 0);
    s.dev_id = 1;
    s.graph = strdup("driver=raw");
    s.bdev = strdup("/dev/ublkb1");
    char *json = ublk_dev_state_to_json(&s);
    assert_non_null(strstr(json, "\"zero_copy\":\"register\""));
    assert_int_equal(ublk_dev_state_from_json(json, &r, NULL), 0);
    assert_int_equal(r.cfg.zero_copy, UBLK_ZC_REGISTER);
    free(json);
    ublk_dev_state_free(&r);
    ublk_dev_state_free(&s);
    Error *err = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"config\": {\"type\": \"raw\", \"files\": [\"a\"],"
                                              " \"zero_copy\": \"maybe\"}}", &r, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "zero_copy"));
    error_free(err);
#endif
}

/* --no-partition-scan: asks for NO_AUTO_PART_SCAN, and only of a kernel that has it. */
static void test_no_partition_scan(void **state)
{
    (void)state;
    UblkDevConfig c;
    Error *err = NULL;
    assert_int_equal(parse(&c, "add raw a", NULL), 0);
    assert_false(ublk_dev_config_flags(&c, 0x1fffff, false) & UBLK_F_NO_AUTO_PART_SCAN);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --no-partition-scan raw a", NULL), 0);
    assert_true(c.no_part_scan);
    assert_true(ublk_dev_config_flags(&c, 0x1fffff, false) & UBLK_F_NO_AUTO_PART_SCAN);
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0x1fffff, false, NULL), 0);
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0x1fe, false, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "NO_AUTO_PART_SCAN"));
    error_free(err);
    assert_int_equal(ublk_ctrl_opcode(UBLK_CMD_TRY_STOP_DEV, UBLK_F_CMD_IOCTL_ENCODE),
                     UBLK_U_CMD_TRY_STOP_DEV);
    ublk_dev_config_free(&c);
}

static uint64_t batch_flag(const char *line, uint64_t supported, const char *want_err)
{
    UblkDevConfig c;
    Error *err = NULL;
    uint64_t f = 0xdead;
    assert_int_equal(parse(&c, line, NULL), 0);
    int ret = ublk_dev_config_batch_flag(&c, supported, &f, &err);
    if (want_err) {
        assert_int_equal(ret, -1);
        if (!err || !strstr(error_get_pretty(err), want_err)) {
            fail_msg("'%s': message '%s' lacks '%s'", line, err ? error_get_pretty(err) : "",
                     want_err);
        }
        error_free(err);
    } else {
        assert_int_equal(ret, 0);
        assert_null(err);
    }
    ublk_dev_config_free(&c);
    return f;
}

/* --io-scheduler: a sysfs word or nothing; kept in the state file. */
static void test_io_scheduler(void **state)
{
    (void)state;
    UblkDevConfig c;
    assert_int_equal(parse(&c, "add raw a", NULL), 0);
    assert_null(c.io_scheduler);               /* the server's default: none */
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --io-scheduler mq-deadline raw a", NULL), 0);
    assert_string_equal(c.io_scheduler, "mq-deadline");
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --io-scheduler=kernel raw a", NULL), 0);
    assert_string_equal(c.io_scheduler, "kernel");
    ublk_dev_config_free(&c);
    /* what the kernel's parser would take as more than one word, or nothing */
    expect_error("add --io-scheduler=a/b raw a", "invalid value for --io-scheduler: 'a/b'");
    expect_error("add --io-scheduler=Bfq raw a", "--io-scheduler");
    expect_error("add --io-scheduler= raw a", "--io-scheduler");
    expect_error("add --io-scheduler=abcdefghijklmnopqrstuvwxyz0123456 raw a", "--io-scheduler");
#ifdef CONFIG_JSON
    UblkDevState s = { 0 }, r;
    assert_int_equal(parse(&s.cfg, "add --io-scheduler bfq raw a", NULL), 0);
    s.dev_id = 1;
    s.graph = strdup("driver=raw");
    s.bdev = strdup("/dev/ublkb1");
    char *json = ublk_dev_state_to_json(&s);
    assert_non_null(strstr(json, "\"io_scheduler\":\"bfq\""));
    assert_int_equal(ublk_dev_state_from_json(json, &r, NULL), 0);
    assert_string_equal(r.cfg.io_scheduler, "bfq");
    free(json);
    ublk_dev_state_free(&r);
    ublk_dev_state_free(&s);
#endif
}

/* --batch: parsing, what each mode asks of which kernel, the exclusions,
 * the state file. */
static void test_batch_modes(void **state)
{
    (void)state;
    const uint64_t k612 = 0x1fe, k73 = 0x1fffff;
    UblkDevConfig c;
    assert_int_equal(parse(&c, "add raw a", NULL), 0);
    assert_int_equal(c.batch, UBLK_BATCH_DEFAULT);
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --batch raw a", NULL), 0);
    assert_int_equal(c.batch, UBLK_BATCH_ON);
    ublk_dev_config_free(&c);
    for (int m = UBLK_BATCH_OFF; m <= UBLK_BATCH_ON; m++) {
        char line[64];
        snprintf(line, sizeof(line), "add --batch=%s raw a", ublk_batch_name(m));
        assert_int_equal(parse(&c, line, NULL), 0);
        assert_int_equal(c.batch, m);
        ublk_dev_config_free(&c);
    }
    expect_error("add --batch=yes raw a", "off, auto, on");
    expect_error("add --batch --per-io-threads=2 raw a", "PER_IO_DAEMON");
    expect_error("add --batch=on -g raw a", "NEED_GET_DATA");

    assert_true(batch_flag("add --batch raw a", k73, NULL) == UBLK_F_BATCH_IO);
    assert_true(batch_flag("add --batch=auto raw a", k73, NULL) == UBLK_F_BATCH_IO);
    assert_true(batch_flag("add --batch=auto raw a", k612, NULL) == 0);
    assert_true(batch_flag("add --batch=off raw a", k73, NULL) == 0);
    /* auto steps aside for what excludes it */
    assert_true(batch_flag("add --batch=auto --per-io-threads=2 raw a", k73, NULL) == 0);
    assert_true(batch_flag("add --batch=auto -g raw a", k73, NULL) == 0);
    assert_true(batch_flag("add --batch raw a", k612, "Linux 7.3") == 0);
    assert_true(batch_flag("add --batch raw a", k612 | UBLK_F_AUTO_BUF_REG, "UBLK_F_BATCH_IO") == 0);

#ifdef CONFIG_JSON
    UblkDevState s = { 0 }, r;
    assert_int_equal(parse(&s.cfg, "add --batch=auto raw a", NULL), 0);
    s.dev_id = 1;
    s.graph = strdup("driver=raw");
    s.bdev = strdup("/dev/ublkb1");
    char *json = ublk_dev_state_to_json(&s);
    assert_non_null(strstr(json, "\"batch\":\"auto\""));
    assert_int_equal(ublk_dev_state_from_json(json, &r, NULL), 0);
    assert_int_equal(r.cfg.batch, UBLK_BATCH_AUTO);
    free(json);
    ublk_dev_state_free(&r);
    ublk_dev_state_free(&s);
    Error *err = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"config\": {\"type\": \"raw\", \"files\": [\"a\"],"
                                              " \"batch\": \"maybe\"}}", &r, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "batch"));
    error_free(err);
#endif
}

/* --per-io-threads: parsing, the limits, the flag and the kernel check. */
static void test_per_io_threads(void **state)
{
    (void)state;
    UblkDevConfig c;
    Error *err = NULL;
    assert_int_equal(parse(&c, "add raw a", NULL), 0);
    assert_int_equal(c.per_io_threads, 0);
    assert_false(ublk_dev_config_flags(&c, 0x1fffff, false) & UBLK_F_PER_IO_DAEMON);
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0x1fe, false, NULL), 0);
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add -q 2 --per-io-threads=3 raw a", NULL), 0);
    assert_int_equal(c.per_io_threads, 3);
    assert_true(ublk_dev_config_flags(&c, 0x1fffff, false) & UBLK_F_PER_IO_DAEMON);
    assert_true(ublk_dev_config_flags(&c, 0x1fffff, true) & UBLK_F_PER_IO_DAEMON);
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0x1fffff, false, NULL), 0);
    /* 6.12's set: refused, naming the flag and the kernel that has it */
    assert_int_equal(ublk_dev_config_check_kernel(&c, 0x1ff, false, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "lacks UBLK_F_PER_IO_DAEMON (Linux 6.16+"));
    error_free(err);
    ublk_dev_config_free(&c);

    assert_int_equal(parse(&c, "add --per-io-threads 1 -d 1 raw a", NULL), 0);
    assert_int_equal(c.per_io_threads, 1);
    ublk_dev_config_free(&c);

    expect_error("add --per-io-threads=0 raw a", "--per-io-threads 0");
    expect_error("add --per-io-threads=x raw a", "expected a number");
    expect_error("add --per-io-threads=-2 raw a", "expected a number");
    expect_error("add --per-io-threads=257 raw a", "--per-io-threads 257 is out of range (1..256)");
    expect_error("add --per-io-threads=99999999999 raw a", "too large");
    expect_error("add --per-io-threads raw a", "invalid value for --per-io-threads: 'raw'");
    expect_error("add raw a --per-io-threads", "option '--per-io-threads' needs a value");
    expect_error("add -q 1 -d 2 --per-io-threads=3 raw a", "more threads than the 2 tags");
    expect_error("add --per-io-threads=2 --affinity=queue raw a", "exclude each other");

#ifdef CONFIG_JSON
    /* kept in the state file, for `recover` */
    UblkDevState s = { 0 }, r;
    assert_int_equal(parse(&s.cfg, "add -q 2 --per-io-threads=3 raw a", NULL), 0);
    s.graph = strdup("driver=raw");
    s.bdev = strdup("/dev/ublkb0");
    char *json = ublk_dev_state_to_json(&s);
    assert_int_equal(ublk_dev_state_from_json(json, &r, NULL), 0);
    assert_int_equal(r.cfg.per_io_threads, 3);
    free(json);
    ublk_dev_state_free(&r);
    ublk_dev_state_free(&s);
    Error *e2 = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"config\": {\"type\": \"raw\", \"files\": "
                                              "[\"a\"], \"per_io_threads\": 300}}", &r, &e2), -1);
    assert_non_null(strstr(error_get_pretty(e2), "--per-io-threads 300"));
    error_free(e2);
#endif
}

/* The (queue, tag) pairs dealt out to per-I/O threads: each pair exactly
 * once, shares that differ by at most one, and one queue spread over all. */
static void test_per_io_split(void **state)
{
    (void)state;
    static const unsigned cases[][3] = {   /* queues, depth, threads */
        { 1, 128, 2 }, { 2, 128, 3 }, { 1, 1, 1 }, { 3, 5, 15 }, { 4, 64, 7 }, { 2, 1, 2 },
        { 1, 4096, 256 },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        unsigned nq = cases[c][0], depth = cases[c][1], nt = cases[c][2];
        unsigned char *seen = calloc(nq * depth, 1);
        unsigned min = ~0u, max = 0, total = 0;
        for (unsigned t = 0; t < nt; t++) {
            unsigned n = ublk_per_io_thread_ntags(nq, depth, nt, t);
            min = n < min ? n : min;
            max = n > max ? n : max;
            total += n;
            for (unsigned k = 0; k < n; k++) {
                unsigned q, tag;
                ublk_per_io_thread_pair(depth, nt, t, k, &q, &tag);
                assert_true(q < nq);
                assert_true(tag < depth);
                assert_int_equal(seen[q * depth + tag], 0);
                seen[q * depth + tag] = 1;
            }
        }
        assert_int_equal(total, nq * depth);
        assert_true(max - min <= 1);
        assert_true(min >= 1);
        free(seen);
    }
    /* -q 1 over two threads: tags alternate, so a queue's first tags (the
     * ones a light load uses) reach both */
    unsigned q, tag;
    assert_int_equal(ublk_per_io_thread_ntags(1, 128, 2, 0), 64);
    ublk_per_io_thread_pair(128, 2, 0, 1, &q, &tag);
    assert_int_equal(q, 0);
    assert_int_equal(tag, 2);
    ublk_per_io_thread_pair(128, 2, 1, 0, &q, &tag);
    assert_int_equal(tag, 1);
    /* -q 2 over three threads: queue 1 starts where queue 0 left off */
    assert_int_equal(ublk_per_io_thread_ntags(2, 128, 3, 0), 86);
    assert_int_equal(ublk_per_io_thread_ntags(2, 128, 3, 2), 85);
    ublk_per_io_thread_pair(128, 3, 2, 42, &q, &tag);
    assert_int_equal(q, 1);
    assert_int_equal(tag, 0);
    /* more threads than tags: the extra ones get none */
    assert_int_equal(ublk_per_io_thread_ntags(1, 2, 3, 2), 0);
}

static void test_throttling_group_refused(void **state)
{
    (void)state;
    UblkDevConfig c;
    int flags;
    Error *err = NULL;
    assert_int_equal(parse(&c, "add raw a.img -o throttling.group=g,throttling.iops-total=100",
                           NULL), 0);
    assert_null(ublk_dev_config_to_options(&c, &flags, &err));
    assert_non_null(strstr(error_get_pretty(err), "every ublkd device is served by its own "
                           "daemon, so a group cannot share limits between devices"));
    error_free(err);
    err = NULL;
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --blockdev driver=null,size=1M,throttling.group=g", NULL), 0);
    assert_null(ublk_dev_config_to_options(&c, &flags, &err));
    assert_non_null(strstr(error_get_pretty(err), "throttling.group"));
    error_free(err);
    ublk_dev_config_free(&c);
    /* limits without a group are the device's own */
    assert_int_equal(parse(&c, "add raw a.img -o throttling.iops-total=100", NULL), 0);
    OptDict *d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_non_null(d);
    optdict_free(d);
    ublk_dev_config_free(&c);
}

/* Found reading the state file parser for the fuzz harness: fields of the
 * wrong type or range were reinterpreted, and some of what was accepted
 * crashed `recover` (a NULL file name or driver reached optdict_set). */
static void expect_state_refused(const char *config, const char *needle)
{
#ifdef CONFIG_JSON
    char json[512];
    UblkDevState s;
    Error *err = NULL;
    snprintf(json, sizeof(json), "{\"id\": 3, \"config\": {%s}}", config);
    if (ublk_dev_state_from_json(json, &s, &err) != -1 || !err) {
        fail_msg("state %s was accepted", json);
    }
    if (!strstr(error_get_pretty(err), needle)) {
        fail_msg("state %s: message '%s' lacks '%s'", json, error_get_pretty(err), needle);
    }
    error_free(err);
#else
    (void)config; (void)needle;
#endif
}

static void test_state_malformed_fields(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    /* a file name that is not a string used to become NULL and crash the
     * graph options `recover` builds */
    expect_state_refused("\"type\": \"raw\", \"files\": [null]", "\"files\"");
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\", {}]", "\"files\"");
    expect_state_refused("\"type\": \"raw\", \"files\": \"a.img\"", "\"files\"");
    /* neither TYPE nor --blockdev: the driver name used to be NULL */
    expect_state_refused("\"files\": [\"a.img\"]", "missing TYPE");
    expect_state_refused("\"type\": 5, \"files\": [\"a.img\"]", "\"type\": 5 is not a string");
    /* 2^32 + 1 queues used to be read as 1 */
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"queues\": 4294967297",
                         "\"queues\": 4294967297 is not an integer from 0 to 4294967295");
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"depth\": \"64\"", "\"depth\"");
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"depth\": 64.5", "\"depth\"");
    expect_state_refused("\"type\": \"null\", \"size\": -1", "\"size\"");
    expect_state_refused("\"type\": \"null\", \"size\": 18446744073709551615", "\"size\"");
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"dev_id\": -2", "\"dev_id\"");
    /* "false" used to read as true */
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"read_only\": \"false\"",
                         "\"read_only\": \"false\" is not true or false");
    /* an unknown mode used to become reissue, silently */
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"recovery\": \"sometimes\"",
                         "one of none fail reissue fail-io");
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"affinity\": 1", "\"affinity\"");
    expect_state_refused("\"type\": \"raw\", \"files\": [\"a\"], \"max_discard\": 1000",
                         "--max-discard 1000 must be a multiple of 512");
    UblkDevState s;
    Error *err = NULL;
    /* The device size a resize recorded: an integer in an image's range. */
    assert_int_equal(ublk_dev_state_from_json("{\"id\": 3, \"size\": -512, \"config\": "
                                              "{\"type\": \"null\", \"size\": 4096}}", &s, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "\"size\": -512 is not an integer"));
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"id\": 3, \"size\": \"1G\", \"config\": "
                                              "{\"type\": \"null\", \"size\": 4096}}", &s, &err), -1);
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"id\": 3, \"pid\": 4294967296, \"config\": "
                                              "{\"type\": \"null\", \"size\": 4096}}", &s, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "\"pid\""));
    error_free(err);
    err = NULL;
    assert_int_equal(ublk_dev_state_from_json("{\"id\": 3, \"config\": []}", &s, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "not a ublkd state file"));
    error_free(err);
    /* what is well formed still reads, null strings as absent */
    assert_int_equal(ublk_dev_state_from_json("{\"id\": 3, \"bdev\": null, \"config\": "
                                              "{\"type\": \"null\", \"size\": 4096, "
                                              "\"read_only\": true, \"affinity\": \"queue\"}}",
                                              &s, NULL), 0);
    assert_null(s.bdev);
    assert_true(s.cfg.read_only);
    assert_int_equal(s.cfg.affinity, UBLK_AFFINITY_QUEUE);
    assert_int_equal(s.cfg.size, 4096);
    ublk_dev_state_free(&s);
#else
    skip();
#endif
}

/* ublk_exec_check: what `upgrade --binary` may run as the device's daemon. */
static void test_exec_check(void **state)
{
    (void)state;
    char dir[] = "/var/tmp/ublkd-test-exec-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/bin", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0700);
    assert_true(fd >= 0);
    close(fd);
    Error *err = NULL;
    uid_t me = geteuid();
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(ublk_exec_check(fd, path, me, NULL), 0);
    /* Owned by neither root nor the caller (the caller is another uid). */
    if (me == 0) {
        assert_int_equal(ublk_exec_check(fd, path, 12345, NULL), 0);   /* root's own */
        assert_int_equal(fchown(fd, 54321, (gid_t)-1), 0);
        assert_int_equal(fchmod(fd, 0700), 0);    /* chown cleared nothing we need */
        assert_int_equal(ublk_exec_check(fd, path, 12345, &err), -1);
        assert_non_null(strstr(error_get_pretty(err), "owned by uid 54321, neither root nor uid 12345"));
        error_free(err);
        err = NULL;
        assert_int_equal(ublk_exec_check(fd, path, 54321, NULL), 0);   /* the caller's own */
        assert_int_equal(fchown(fd, 0, (gid_t)-1), 0);
    } else {
        assert_int_equal(ublk_exec_check(fd, path, me + 1, &err), -1);
        assert_non_null(strstr(error_get_pretty(err), "neither root nor uid"));
        error_free(err);
        err = NULL;
    }
    assert_int_equal(fchmod(fd, 0600), 0);
    assert_int_equal(ublk_exec_check(fd, path, me, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "is not executable"));
    error_free(err);
    err = NULL;
    assert_int_equal(fchmod(fd, 0757), 0);
    assert_int_equal(ublk_exec_check(fd, path, me, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "writable by others"));
    error_free(err);
    err = NULL;
    assert_int_equal(fchmod(fd, 0775), 0);
    assert_int_equal(ublk_exec_check(fd, path, me, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "writable by its group"));
    error_free(err);
    err = NULL;
    assert_int_equal(fchmod(fd, 0755), 0);
    assert_int_equal(ublk_exec_check(fd, path, me, NULL), 0);
    close(fd);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(dfd >= 0);
    assert_int_equal(ublk_exec_check(dfd, dir, me, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "not a regular file"));
    error_free(err);
    close(dfd);
    unlink(path);
    rmdir(dir);
}

/* After a live quorum change the config opens the new graph (recover). */
static void test_change_child(void **state)
{
    (void)state;
    UblkDevConfig c;
    assert_int_equal(parse(&c, "add -t quorum -o vote-threshold=2 /a /b /c", NULL), 0);
    assert_int_equal(ublk_dev_config_change_child(&c, "", BDRV_CHILD_REPLACE, 1,
                                                  "driver=raw,file.filename=/n", true, NULL), 0);
    assert_null(c.type);
    assert_int_equal(c.nfiles, 0);
    assert_null(c.extra_opts);
    int flags;
    OptDict *d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_non_null(d);
    assert_string_equal(optdict_get(d, "driver"), "quorum");
    assert_string_equal(optdict_get(d, "vote-threshold"), "2");
    assert_string_equal(optdict_get(d, "children.0.file.filename"), "/a");
    assert_string_equal(optdict_get(d, "children.1.file.filename"), "/n");
    assert_string_equal(optdict_get(d, "children.1.driver"), "raw");
    assert_string_equal(optdict_get(d, "children.1.rebuild"), "on");
    assert_string_equal(optdict_get(d, "children.2.file.filename"), "/c");
    optdict_free(d);
    /* Remove child 0: the others move down, the mark with its child. */
    assert_int_equal(ublk_dev_config_change_child(&c, "", BDRV_CHILD_REMOVE, 0, NULL, false,
                                                  NULL), 0);
    d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_string_equal(optdict_get(d, "children.0.file.filename"), "/n");
    assert_string_equal(optdict_get(d, "children.0.rebuild"), "on");
    assert_string_equal(optdict_get(d, "children.1.file.filename"), "/c");
    assert_false(optdict_has_prefix(d, "children.2"));
    optdict_free(d);
    assert_int_equal(ublk_dev_config_clear_rebuild(&c, "", 0), 1);
    assert_int_equal(ublk_dev_config_clear_rebuild(&c, "", 0), 0);
    /* Add, under a prefix (a raw over the quorum), from json:. */
    ublk_dev_config_free(&c);
    assert_int_equal(parse(&c, "add --blockdev driver=raw,file.driver=quorum,"
                           "file.vote-threshold=1,file.children.0.file.filename=/a", NULL), 0);
    assert_int_equal(ublk_dev_config_change_child(&c, "file.", BDRV_CHILD_ADD, 1,
                                                  "json:{\"driver\":\"file\",\"filename\":"
                                                  "\"/x,y\"}", true, NULL), 0);
    d = ublk_dev_config_to_options(&c, &flags, NULL);
    assert_string_equal(optdict_get(d, "file.children.1.filename"), "/x,y");
    assert_string_equal(optdict_get(d, "file.children.1.rebuild"), "on");
    assert_string_equal(optdict_get(d, "file.children.0.file.filename"), "/a");
    optdict_free(d);
    Error *err = NULL;
    assert_int_equal(ublk_dev_config_change_child(&c, "file.", BDRV_CHILD_ADD, 2, "json:{",
                                                  true, &err), -1);
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), "the new child's options"));
    error_free(err);
    ublk_dev_config_free(&c);
}

/* A change recorded before it is made is taken back when it then fails:
 * the config opens exactly the graph it opened before. */
static void test_change_child_taken_back(void **state)
{
    (void)state;
    UblkDevConfig c;
    assert_int_equal(parse(&c, "add -t quorum -o vote-threshold=2 /a /b /c", NULL), 0);
    int flags;
    OptDict *before = ublk_dev_config_to_options(&c, &flags, NULL);
    char *want = optdict_to_string(before);
    UblkGraphSave g;
    ublk_dev_config_graph_save(&c, &g);
    assert_int_equal(ublk_dev_config_change_child(&c, "", BDRV_CHILD_REPLACE, 1,
                                                  "driver=raw,file.filename=/n", true, NULL), 0);
    assert_null(c.type);
    ublk_dev_config_graph_restore(&c, &g);
    assert_string_equal(c.type, "quorum");
    assert_int_equal(c.nfiles, 3);
    assert_string_equal(c.files[1], "/b");
    assert_null(g.type);
    OptDict *after = ublk_dev_config_to_options(&c, &flags, NULL);
    char *got = optdict_to_string(after);
    assert_string_equal(got, want);
    free(got);
    free(want);
    optdict_free(before);
    optdict_free(after);
    /* Saved and not needed: freed without touching c. */
    ublk_dev_config_graph_save(&c, &g);
    ublk_dev_config_graph_free(&g);
    assert_string_equal(c.files[2], "/c");
    ublk_dev_config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exec_check),
        cmocka_unit_test(test_proc_start_time),
        cmocka_unit_test(test_run_dir_trust),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_graph_options),
        cmocka_unit_test(test_hostile_values),
        cmocka_unit_test(test_kernel_must_honour_recovery),
        cmocka_unit_test(test_log_must_be_writable),
        cmocka_unit_test(test_throttling_group_refused),
        cmocka_unit_test(test_zero_copy_modes),
        cmocka_unit_test(test_batch_modes),
        cmocka_unit_test(test_io_scheduler),
        cmocka_unit_test(test_no_partition_scan),
        cmocka_unit_test(test_per_io_threads),
        cmocka_unit_test(test_per_io_split),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_objects),
        cmocka_unit_test(test_remote_nodes),
        cmocka_unit_test(test_change_child),
        cmocka_unit_test(test_change_child_taken_back),
        cmocka_unit_test(test_state_files),
        cmocka_unit_test(test_state_malformed_fields),
    };
    return cmocka_run_group_tests_name("ublk-config", tests, NULL, NULL);
}
#else
/* Built without the ublk server (CONFIG_UBLK=n): nothing to test. */
int main(void)
{
    return 0;
}
#endif
