/*
 * fuzz-state.c - libFuzzer harness for the per-device state file
 * (/run/ublkd/ID.json, ublk/config.c) that `list`, `del` and `recover` read.
 * The input is the file: it is written to a private run directory
 * (UBLKD_RUN_DIR) as 7.json and read back with ublk_state_read, the path
 * the verbs take.  For a file that is accepted:
 *   - it is the state of device 7 and its configuration passes
 *     ublk_dev_config_check, with a file name for each of nfiles;
 *   - every integer field the input gives is the value the state holds
 *     (no truncation into a narrower field), and a field of the wrong
 *     JSON type is never accepted;
 *   - writing it (ublk_dev_state_to_json) and reading that back gives the
 *     same state, and writing again gives the same text;
 *   - ublk_dev_config_to_options (what `recover` opens) either builds the
 *     graph's options or says why, never both, never neither.
 * Built and run by tests/fuzz/run.sh.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "block.h"
#include "ublk.h"
#include "fuzz-check.h"
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif

#define FUZZ_ID 7

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static char run_dir[64];
static char state_file[128];

static void remove_run_dir(void)
{
    unlink(state_file);
    rmdir(run_dir);
}

static bool make_run_dir(const char *template)
{
    snprintf(run_dir, sizeof(run_dir), "%s", template);
    return mkdtemp(run_dir) != NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    /* A tmpfs if there is one: the file is rewritten for every input. */
    if (!make_run_dir("/dev/shm/fuzz-state.XXXXXX") && !make_run_dir("/tmp/fuzz-state.XXXXXX")) {
        perror("mkdtemp");
        abort();
    }
    snprintf(state_file, sizeof(state_file), "%s/%d.json", run_dir, FUZZ_ID);
    setenv("UBLKD_RUN_DIR", run_dir, 1);
    atexit(remove_run_dir);
    return 0;
}

#ifdef CONFIG_JSON
/* The input's own view of a field: present integers must have come through
 * unchanged; present fields of another type must have been refused. */
static void check_int(json_object *o, const char *k, int64_t held)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, k, &v)) {
        CHECK(json_object_is_type(v, json_type_int));
        CHECK(json_object_get_int64(v) == held);
    }
}

static void check_type(json_object *o, const char *k, enum json_type t)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, k, &v) && v) {
        CHECK(json_object_is_type(v, t));
    }
}

static void check_against_input(const char *text, const UblkDevState *s)
{
    json_object *o = json_tokener_parse(text), *co = NULL;
    CHECK(o && json_object_object_get_ex(o, "config", &co));
    const UblkDevConfig *c = &s->cfg;
    check_int(o, "id", s->dev_id);
    check_int(o, "pid", s->pid);
    check_int(o, "start_time", (int64_t)s->start_time);
    check_int(o, "flags", (int64_t)s->flags);
    check_int(o, "queues", s->nr_queues);
    check_int(o, "depth", s->depth);
    check_int(co, "dev_id", c->dev_id);
    check_int(co, "size", (int64_t)c->size);
    check_int(co, "queues", c->nr_queues);
    check_int(co, "depth", c->depth);
    check_int(co, "max_io_size", c->max_io_size);
    check_int(co, "logical_block_size", c->logical_bs);
    check_int(co, "physical_block_size", c->physical_bs);
    check_int(co, "io_opt", c->io_opt);
    check_int(co, "discard_granularity", c->discard_granularity);
    check_int(co, "max_discard", (int64_t)c->max_discard);
    static const char *const strs[] = { "type", "blockdev", "options", "cache", "discard",
                                        "recovery", "affinity", "log" };
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++) {
        check_type(co, strs[i], json_type_string);
    }
    check_type(o, "bdev", json_type_string);
    check_type(o, "graph", json_type_string);
    static const char *const bools[] = { "read_only", "rotational", "no_discard", "user_copy",
                                         "need_get_data" };
    for (size_t i = 0; i < ARRAY_SIZE(bools); i++) {
        check_type(co, bools[i], json_type_boolean);
    }
    json_object *v;
    if (json_object_object_get_ex(co, "read_only", &v)) {
        CHECK(json_object_get_boolean(v) == c->read_only);
    }
    json_object_put(o);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = open(state_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, data, size) == (ssize_t)size);
    close(fd);

    UblkDevState s, r;
    Error *err = NULL;
    int ret = ublk_state_read(FUZZ_ID, &s, &err);
    CHECK(ret == 0 || ret == -2);           /* the file is there: read or refused */
    CHECK((ret == 0) == (err == NULL));
    if (ret < 0) {
        CHECK(strlen(error_get_pretty(err)) > 0);
        error_free(err);
        return 0;
    }

    CHECK(s.dev_id == FUZZ_ID);
    CHECK(ublk_dev_config_check(&s.cfg, NULL) == 0);
    CHECK(s.cfg.type || s.cfg.blockdev);
    for (int i = 0; i < s.cfg.nfiles; i++) {
        CHECK(s.cfg.files[i] != NULL);
    }
#ifdef CONFIG_JSON
    /* The input as a C string: what ublk_state_read parsed. */
    char *text = strndup((const char *)data, size);
    check_against_input(text, &s);
    free(text);
#endif

    char *json = ublk_dev_state_to_json(&s);
    CHECK(json);
    if (ublk_dev_state_from_json(json, &r, &err) < 0) {
        fprintf(stderr, "fuzz-state: own output refused: %s\n%s\n", error_get_pretty(err), json);
        abort();
    }
    check_same_state(&s, &r);
    char *json2 = ublk_dev_state_to_json(&r);
    CHECK(!strcmp(json, json2));
    free(json2);
    free(json);
    ublk_dev_state_free(&r);

    int flags = 0;
    OptDict *opts = ublk_dev_config_to_options(&s.cfg, &flags, &err);
    CHECK((opts == NULL) == (err != NULL));
    if (opts) {
        CHECK(s.cfg.read_only == !(flags & BDRV_O_RDWR));
        optdict_free(opts);
    } else {
        error_free(err);
    }
    ublk_dev_state_free(&s);
    return 0;
}
