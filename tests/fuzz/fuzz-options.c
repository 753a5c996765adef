/*
 * fuzz-options.c - libFuzzer harness for the option parsers (io/options.c):
 * "k=v,..." text (with and without an implied key), "json:{...}" and the
 * typed getters drivers use on the values.  The first input byte picks the
 * mode, the rest is the text.  Properties checked on every accepted input:
 *   - every key is a non-empty dotted name of [A-Za-z0-9_-] with no empty segment;
 *   - optdict_to_string's canonical form parses back to the same dictionary
 *     (same keys, values and order), and re-printing it gives the same text;
 *   - clone, merge and extract_prefix keep every key exactly once;
 *   - parse_size: an accepted size printed in decimal reads back the same,
 *     and take_bool/int/size/enum either succeed or set an error, never both.
 * Built and run by tests/fuzz/run.sh.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "options.h"
#include "fuzz-check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_key(const char *key)
{
    size_t len = strlen(key);
    CHECK(len > 0);
    CHECK(key[0] != '.' && key[len - 1] != '.');
    CHECK(!strstr(key, ".."));
    CHECK(strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") == len);
}

static bool same_dict(const OptDict *a, const OptDict *b)
{
    if (optdict_count(a) != optdict_count(b)) {
        return false;
    }
    for (size_t i = 0; i < optdict_count(a); i++) {
        if (strcmp(optdict_key_at(a, i), optdict_key_at(b, i)) ||
            strcmp(optdict_value_at(a, i), optdict_value_at(b, i))) {
            return false;
        }
    }
    return true;
}

static void check_round_trip(const OptDict *d)
{
    Error *err = NULL;
    char *text = optdict_to_string(d);
    OptDict *again = optdict_parse(text, NULL, &err);
    if (!again) {
        fprintf(stderr, "fuzz-options: canonical form '%s' does not parse: %s\n", text,
                error_get_pretty(err));
        abort();
    }
    CHECK(same_dict(d, again));
    char *text2 = optdict_to_string(again);
    CHECK(!strcmp(text, text2));
    free(text2);
    free(text);
    optdict_free(again);
}

static void check_size(const char *v)
{
    uint64_t n, m;
    if (parse_size(v, &n) < 0) {
        return;
    }
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, n);
    CHECK(parse_size(buf, &m) == 0 && m == n);
    /* A plain decimal number of bytes means just that. */
    if (v[0] >= '0' && v[0] <= '9' && strspn(v, "0123456789") == strlen(v)) {
        CHECK(n == strtoull(v, NULL, 10));
    }
}

/* What a driver's open does with its options: take typed values, hand
 * prefixes down, complain about leftovers. */
static void take_all(OptDict *d)
{
    static const char *const choices[] = { "off", "on", "unmap", NULL };
    size_t n = optdict_count(d);

    OptDict *file = optdict_extract_prefix(d, "file.");
    OptDict *backing = optdict_extract_prefix(d, "backing.");
    CHECK(optdict_count(file) + optdict_count(backing) + optdict_count(d) == n);
    for (size_t i = 0; i < optdict_count(d); i++) {
        const char *k = optdict_key_at(d, i);
        CHECK(!(strncmp(k, "file.", 5) == 0 && k[5]) && !(strncmp(k, "backing.", 8) == 0 && k[8]));
    }
    for (size_t i = 0; i < optdict_count(file); i++) {
        check_key(optdict_key_at(file, i));
    }
    while (optdict_count(d)) {
        char *key = strdup(optdict_key_at(d, 0));
        Error *err = NULL;
        bool b;
        int64_t i64;
        uint64_t u64;
        int ret;
        check_size(optdict_get(d, key));
        switch (key[0] % 4) {
        case 0:  ret = optdict_take_bool(d, key, false, &b, &err); break;
        case 1:  ret = optdict_take_int(d, key, 0, &i64, &err); break;
        case 2:  ret = optdict_take_size(d, key, 0, &u64, &err); break;
        default: ret = optdict_take_enum(d, key, choices, 0, &err); break;
        }
        CHECK((ret < 0) == (err != NULL));
        CHECK(!optdict_has(d, key));     /* taken, whatever its value */
        error_free(err);
        free(key);
    }
    Error *err = NULL;
    CHECK(optdict_check_empty(d, "fuzz", &err) == 0 && !err);
    if (optdict_count(file)) {
        CHECK(optdict_check_empty(file, "fuzz", &err) < 0 && err);
        error_free(err);
    }
    optdict_free(file);
    optdict_free(backing);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    unsigned mode = data[0] % 3;
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';

    Error *err = NULL;
    OptDict *d;
    switch (mode) {
    case 0:  d = optdict_parse(text, NULL, &err); break;
    case 1:  d = optdict_parse(text, "filename", &err); break;
    default: d = optdict_parse_json(text, &err); break;
    }
    CHECK((d == NULL) == (err != NULL));
    if (!d) {
        CHECK(strlen(error_get_pretty(err)) > 0);
        error_free(err);
        free(text);
        return 0;
    }
    for (size_t i = 0; i < optdict_count(d); i++) {
        check_key(optdict_key_at(d, i));
        CHECK(optdict_get(d, optdict_key_at(d, i)) == optdict_value_at(d, i));  /* unique */
    }
    check_round_trip(d);

    OptDict *c = optdict_clone(d);
    CHECK(same_dict(c, d));
    optdict_merge(c, d, false);
    CHECK(same_dict(c, d));
    optdict_merge(c, d, true);
    CHECK(same_dict(c, d));
    optdict_free(c);

    take_all(d);
    optdict_free(d);
    free(text);
    return 0;
}
