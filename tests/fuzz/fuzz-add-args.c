/*
 * fuzz-add-args.c - libFuzzer harness for `ublkd add`'s arguments
 * (ublk_dev_config_parse) and what is built from them: the graph's options
 * (--blockdev 'k=v,...' or 'json:{...}' merged with -o), the state file and
 * the kernel parameters.  The input is the argument list, one argument per
 * line (NUL bytes end the input); "add" is prepended.  For arguments that
 * are accepted:
 *   - the configuration passes ublk_dev_config_check;
 *   - the options either build or say why (never both, never neither), and
 *     hold every -o key with the value -o gave it, and every --blockdev key
 *     -o does not override with --blockdev's value;
 *   - the state file `recover` would read back (to_json, from_json) holds
 *     the same configuration;
 *   - ublk_params_build for a 1 GiB image (or the null device's --size)
 *     either fails with a reason or gives a device no larger than the
 *     image, whose logical block divides it and whose largest request is
 *     --max-io-size.
 * Built and run by tests/fuzz/run.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block.h"
#include "ublk.h"
#include "fuzz-check.h"

#define MAX_ARGS 40

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    /* --help prints the usage to stdout. */
    if (!freopen("/dev/null", "w", stdout)) {
        abort();
    }
    return 0;
}

/* Every key of sub is in d with the same value, unless over has it. */
static void check_keys_kept(const OptDict *d, const OptDict *sub, const OptDict *over)
{
    for (size_t i = 0; i < optdict_count(sub); i++) {
        const char *k = optdict_key_at(sub, i);
        if (over && optdict_has(over, k)) {
            continue;
        }
        CHECK(optdict_get(d, k) && !strcmp(optdict_get(d, k), optdict_value_at(sub, i)));
    }
}

static void check_options(const UblkDevConfig *c)
{
    Error *err = NULL;
    int flags = 0;
    OptDict *d = ublk_dev_config_to_options(c, &flags, &err);
    CHECK((d == NULL) == (err != NULL));
    if (!d) {
        error_free(err);
        return;
    }
    OptDict *extra = c->extra_opts ? optdict_parse(c->extra_opts, NULL, NULL) : NULL;
    CHECK(!c->extra_opts || extra);     /* it parsed once already */
    if (extra) {
        check_keys_kept(d, extra, NULL);
    }
    if (c->blockdev) {
        OptDict *bd = !strncmp(c->blockdev, "json:", 5) ? optdict_parse_json(c->blockdev + 5, NULL)
                                                       : optdict_parse(c->blockdev, NULL, NULL);
        CHECK(bd);
        check_keys_kept(d, bd, extra);
        optdict_free(bd);
    } else {
        CHECK(c->type);
        CHECK(extra && optdict_has(extra, "driver") ? true
              : !strcmp(optdict_get(d, "driver"), c->type));
    }
    CHECK(!optdict_has(d, "throttling.group"));
    CHECK(c->read_only == !(flags & BDRV_O_RDWR));
    optdict_free(extra);
    optdict_free(d);
}

static void check_state(const UblkDevConfig *c)
{
    UblkDevState s = { .cfg = *c, .dev_id = 3, .pid = 42, .nr_queues = c->nr_queues,
                       .depth = c->depth }, r;
    Error *err = NULL;
    char *json = ublk_dev_state_to_json(&s);
    if (!json) {
        return;                         /* built without JSON */
    }
    if (ublk_dev_state_from_json(json, &r, &err) < 0) {
        fprintf(stderr, "fuzz-add-args: state of accepted arguments refused: %s\n%s\n",
                error_get_pretty(err), json);
        abort();
    }
    check_same_state(&s, &r);
    ublk_dev_state_free(&r);
    free(json);
}

static void check_params(const UblkDevConfig *c)
{
    int64_t size = c->size ? (int64_t)c->size : (int64_t)GiB;
    struct ublk_params p;
    Error *err = NULL;
    int ret = ublk_params_build(c, NULL, size, 0, c->read_only, true, &p, &err);
    CHECK((ret < 0) == (err != NULL));
    if (ret < 0) {
        error_free(err);
        return;
    }
    const struct ublk_param_basic *b = &p.basic;
    uint32_t lbs = 1U << b->logical_bs_shift;
    CHECK(lbs >= 512 && lbs <= 4096);
    CHECK(b->physical_bs_shift >= b->logical_bs_shift);
    CHECK(b->dev_sectors > 0 && b->dev_sectors <= (uint64_t)size >> 9);
    CHECK((uint64_t)size % lbs == 0);
    CHECK(b->max_sectors == c->max_io_size >> 9);
    CHECK(!c->read_only == !!(p.types & UBLK_PARAM_TYPE_DISCARD));
    if (p.types & UBLK_PARAM_TYPE_DISCARD) {
        CHECK(IS_POW2(p.discard.discard_granularity) && p.discard.discard_granularity >= 512);
        CHECK(!c->no_discard || p.discard.max_discard_sectors == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = strndup((const char *)data, size);
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = "add";
    for (char *p = text; p && argc < MAX_ARGS + 1;) {
        char *nl = strchr(p, '\n');
        if (nl) {
            *nl = '\0';
        }
        argv[argc++] = p;
        p = nl ? nl + 1 : NULL;
    }
    argv[argc] = NULL;

    UblkDevConfig c;
    Error *err = NULL;
    ublk_dev_config_init(&c);
    int ret = ublk_dev_config_parse(&c, argc, argv, &err);
    CHECK(ret == 0 || ret == 1 || ret == -1);
    CHECK((ret == -1) == (err != NULL));
    if (ret == -1) {
        CHECK(strlen(error_get_pretty(err)) > 0);
        error_free(err);
    } else if (ret == 0) {
        CHECK(ublk_dev_config_check(&c, NULL) == 0);
        CHECK(c.type || c.blockdev);
        check_options(&c);
        check_state(&c);
        check_params(&c);
    }
    ublk_dev_config_free(&c);
    free(text);
    return 0;
}
