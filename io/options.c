/*
 * options.c - OptDict: the flat dotted-key dictionaries that describe block
 * graphs ("driver=raw,file.filename=x.img"), their text and JSON parsers, and
 * typed "take" getters that remove what a driver consumes so leftovers can be
 * reported.  Dictionaries are small (tens of keys) and only used at open and
 * create time, so a plain array with linear search is the right structure.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "options.h"
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif

struct OptDict {
    char **keys;
    char **values;
    size_t n, alloc;
};

static void *xrealloc(void *p, size_t size)
{
    p = realloc(p, size);
    if (!p) {
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) {
        abort();
    }
    return d;
}

OptDict *optdict_new(void)
{
    OptDict *d = calloc(1, sizeof(*d));
    if (!d) {
        abort();
    }
    return d;
}

void optdict_free(OptDict *d)
{
    if (!d) {
        return;
    }
    for (size_t i = 0; i < d->n; i++) {
        free(d->keys[i]);
        free(d->values[i]);
    }
    free(d->keys);
    free(d->values);
    free(d);
}

OptDict *optdict_clone(const OptDict *d)
{
    OptDict *c = optdict_new();
    for (size_t i = 0; d && i < d->n; i++) {
        optdict_set(c, d->keys[i], d->values[i]);
    }
    return c;
}

static ssize_t find(const OptDict *d, const char *key)
{
    for (size_t i = 0; i < d->n; i++) {
        if (!strcmp(d->keys[i], key)) {
            return (ssize_t)i;
        }
    }
    return -1;
}

/* Remove entry i keeping the order of the others (order shows in to_string). */
static void remove_at(OptDict *d, size_t i)
{
    free(d->keys[i]);
    free(d->values[i]);
    memmove(&d->keys[i], &d->keys[i + 1], (d->n - i - 1) * sizeof(char *));
    memmove(&d->values[i], &d->values[i + 1], (d->n - i - 1) * sizeof(char *));
    d->n--;
}

/* Takes ownership of value. */
static void set_owned(OptDict *d, const char *key, char *value)
{
    ssize_t i = find(d, key);
    if (i >= 0) {
        free(d->values[i]);
        d->values[i] = value;
        return;
    }
    if (d->n == d->alloc) {
        d->alloc = d->alloc ? d->alloc * 2 : 8;
        d->keys = xrealloc(d->keys, d->alloc * sizeof(char *));
        d->values = xrealloc(d->values, d->alloc * sizeof(char *));
    }
    d->keys[d->n] = xstrdup(key);
    d->values[d->n] = value;
    d->n++;
}

void optdict_set(OptDict *d, const char *key, const char *value)
{
    set_owned(d, key, xstrdup(value));
}

void optdict_set_int(OptDict *d, const char *key, int64_t value)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRId64, value);
    optdict_set(d, key, buf);
}

const char *optdict_get(const OptDict *d, const char *key)
{
    ssize_t i = d ? find(d, key) : -1;
    return i >= 0 ? d->values[i] : NULL;
}

bool optdict_has(const OptDict *d, const char *key)
{
    return optdict_get(d, key) != NULL;
}

static bool key_has_prefix(const char *key, const char *prefix)
{
    size_t plen = strlen(prefix);
    if (plen && prefix[plen - 1] == '.' && strlen(key) == plen - 1 &&
        !strncmp(key, prefix, plen - 1)) {
        return true;
    }
    return !strncmp(key, prefix, plen);
}

bool optdict_has_prefix(const OptDict *d, const char *prefix)
{
    for (size_t i = 0; d && i < d->n; i++) {
        if (key_has_prefix(d->keys[i], prefix)) {
            return true;
        }
    }
    return false;
}

void optdict_del(OptDict *d, const char *key)
{
    ssize_t i = find(d, key);
    if (i >= 0) {
        remove_at(d, (size_t)i);
    }
}

size_t optdict_count(const OptDict *d)
{
    return d ? d->n : 0;
}

const char *optdict_key_at(const OptDict *d, size_t i)
{
    return i < d->n ? d->keys[i] : NULL;
}

const char *optdict_value_at(const OptDict *d, size_t i)
{
    return i < d->n ? d->values[i] : NULL;
}

void optdict_merge(OptDict *d, const OptDict *src, bool overwrite)
{
    for (size_t i = 0; src && i < src->n; i++) {
        if (overwrite || find(d, src->keys[i]) < 0) {
            optdict_set(d, src->keys[i], src->values[i]);
        }
    }
}

/* ---- text form ---- */

/* Dotted keys made of [A-Za-z0-9_-] segments; no empty segment. */
static bool key_is_valid(const char *key)
{
    bool seg_empty = true;
    for (const char *p = key; *p; p++) {
        if (*p == '.') {
            if (seg_empty) {
                return false;
            }
            seg_empty = true;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || *p == '-' || *p == '_') {
            seg_empty = false;
        } else {
            return false;
        }
    }
    return !seg_empty;
}

/*
 * Read one element up to an unescaped ',' into a new string with ",," turned
 * into ','.  *eq gets the position of the first '=' in the unescaped result
 * (-1 if none).  Returns the position after the terminating comma (or the NUL).
 */
static const char *read_element(const char *p, char **out, ssize_t *eq)
{
    size_t cap = strlen(p) + 1, n = 0;
    char *s = malloc(cap);
    if (!s) {
        abort();
    }
    *eq = -1;
    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                p++;
                break;
            }
            p++;   /* ",," is a literal comma */
        } else if (*p == '=' && *eq < 0) {
            *eq = (ssize_t)n;
        }
        s[n++] = *p++;
    }
    s[n] = '\0';
    *out = s;
    return p;
}

OptDict *optdict_parse(const char *str, const char *implied_key, Error **errp)
{
    OptDict *d = optdict_new();
    const char *p = str ? str : "";
    bool first = true;

    while (*p) {
        char *elem;
        ssize_t eq;
        p = read_element(p, &elem, &eq);
        if (eq < 0) {
            if (first && implied_key && *elem) {
                set_owned(d, implied_key, elem);
                first = false;
                continue;
            }
            if (!*elem) {
                error_setg(errp, "Empty option in '%s' (stray ',')", str);
            } else {
                error_setg(errp, "Expected '=' after option '%s' in '%s'", elem, str);
            }
            free(elem);
            optdict_free(d);
            return NULL;
        }
        elem[eq] = '\0';
        if (!key_is_valid(elem)) {
            error_setg(errp, "Invalid option name '%s' in '%s'", elem, str);
            free(elem);
            optdict_free(d);
            return NULL;
        }
        optdict_set(d, elem, elem + eq + 1);
        free(elem);
        first = false;
    }
    return d;
}

char *optdict_to_string(const OptDict *d)
{
    size_t len = 1;
    for (size_t i = 0; d && i < d->n; i++) {
        len += strlen(d->keys[i]) + 2 * strlen(d->values[i]) + 2;
    }
    char *s = malloc(len), *o = s;
    if (!s) {
        abort();
    }
    for (size_t i = 0; d && i < d->n; i++) {
        if (i) {
            *o++ = ',';
        }
        o = stpcpy(o, d->keys[i]);
        *o++ = '=';
        for (const char *v = d->values[i]; *v; v++) {
            if (*v == ',') {
                *o++ = ',';
            }
            *o++ = *v;
        }
    }
    *o = '\0';
    return s;
}

/* ---- JSON form ---- */

#ifdef CONFIG_JSON
/* "prefix.name" into key (size bytes); a name cut short would be another
 * option's, so that is an error. */
static bool join_key(char *key, size_t size, const char *prefix, const char *name, Error **errp)
{
    if (snprintf(key, size, "%s%s%s", prefix, *prefix ? "." : "", name) >= (int)size) {
        error_setg(errp, "Option name '%.40s...' in JSON is too long (at most %zu characters)",
                   key, size - 1);
        return false;
    }
    return true;
}

static int flatten_json(OptDict *d, const char *prefix, struct json_object *obj, Error **errp)
{
    char key[1024];

    switch (json_object_get_type(obj)) {
    case json_type_object: {
        struct json_object_iterator it = json_object_iter_begin(obj);
        struct json_object_iterator end = json_object_iter_end(obj);
        for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
            const char *name = json_object_iter_peek_name(&it);
            if (!join_key(key, sizeof(key), prefix, name, errp)) {
                return -EINVAL;
            }
            if (!key_is_valid(key)) {
                error_setg(errp, "Invalid option name '%s' in JSON", key);
                return -EINVAL;
            }
            if (flatten_json(d, key, json_object_iter_peek_value(&it), errp) < 0) {
                return -EINVAL;
            }
        }
        return 0;
    }
    case json_type_array: {
        size_t n = json_object_array_length(obj);
        for (size_t i = 0; i < n; i++) {
            char idx[24];
            snprintf(idx, sizeof(idx), "%zu", i);
            if (!join_key(key, sizeof(key), prefix, idx, errp)) {
                return -EINVAL;
            }
            if (flatten_json(d, key, json_object_array_get_idx(obj, i), errp) < 0) {
                return -EINVAL;
            }
        }
        return 0;
    }
    case json_type_null:
        /* "backing": null means "no backing file": an empty value says that. */
        optdict_set(d, prefix, "");
        return 0;
    case json_type_boolean:
        optdict_set(d, prefix, json_object_get_boolean(obj) ? "on" : "off");
        return 0;
    default:
        /* Strings as they are, numbers in their written form. */
        if (!*prefix) {
            error_setg(errp, "JSON options must be an object, not a plain value");
            return -EINVAL;
        }
        optdict_set(d, prefix, json_object_get_string(obj));
        return 0;
    }
}

OptDict *optdict_parse_json(const char *json, Error **errp)
{
    struct json_tokener *tok = json_tokener_new();
    size_t len = strlen(json);
    struct json_object *obj = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);

    if (!obj || jerr != json_tokener_success) {
        error_setg(errp, "Could not parse JSON options '%s': %s", json,
                   jerr == json_tokener_continue ? "unexpected end of input"
                                                 : json_tokener_error_desc(jerr));
        json_object_put(obj);
        return NULL;
    }
    while (used < len && strchr(" \t\r\n", json[used])) {
        used++;
    }
    if (used < len) {
        error_setg(errp, "Could not parse JSON options: trailing text '%s'", json + used);
        json_object_put(obj);
        return NULL;
    }
    if (!json_object_is_type(obj, json_type_object)) {
        error_setg(errp, "JSON options must be an object ('{...}'), got '%s'", json);
        json_object_put(obj);
        return NULL;
    }
    OptDict *d = optdict_new();
    if (flatten_json(d, "", obj, errp) < 0) {
        optdict_free(d);
        d = NULL;
    }
    json_object_put(obj);
    return d;
}
#else
OptDict *optdict_parse_json(const char *json, Error **errp)
{
    (void)json;
    error_setg(errp, "JSON options are not available: ublkd was built without JSON "
               "support (CONFIG_JSON=n)");
    return NULL;
}
#endif

/* ---- typed getters ---- */

int parse_size(const char *str, uint64_t *out)
{
    const char *p = str;
    uint64_t whole = 0, frac_num = 0, frac_den = 1;
    bool digits = false;

    while (*p == ' ') {
        p++;
    }
    for (; *p >= '0' && *p <= '9'; p++, digits = true) {
        if (whole > (UINT64_MAX - 9) / 10) {
            return -ERANGE;
        }
        whole = whole * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, digits = true) {
            if (frac_den < 1000000000000ULL) {   /* more precision is noise */
                frac_num = frac_num * 10 + (uint64_t)(*p - '0');
                frac_den *= 10;
            }
        }
    }
    if (!digits) {
        return -EINVAL;
    }
    unsigned shift = 0;
    switch (*p) {
    case '\0':                      break;
    case 'b': case 'B': p++;        break;
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    case 't': case 'T': shift = 40; p++; break;
    case 'p': case 'P': shift = 50; p++; break;
    case 'e': case 'E': shift = 60; p++; break;
    default:
        return -EINVAL;
    }
    if (*p) {
        return -EINVAL;
    }
    if (frac_num && !shift) {
        return -EINVAL;             /* "1.5" bytes makes no sense */
    }
    if (shift && whole > (UINT64_MAX >> shift)) {
        return -ERANGE;
    }
    uint64_t v = whole << shift;
    if (frac_num) {
        /* frac_num/frac_den < 1, so this fits once divided. */
        unsigned __int128 f = ((unsigned __int128)frac_num << shift) / frac_den;
        if (v > UINT64_MAX - (uint64_t)f) {
            return -ERANGE;
        }
        v += (uint64_t)f;
    }
    *out = v;
    return 0;
}

int optdict_take_str(OptDict *d, const char *key, const char *def, char **out)
{
    ssize_t i = find(d, key);
    if (i < 0) {
        *out = def ? xstrdup(def) : NULL;
        return 0;
    }
    *out = d->values[i];
    d->values[i] = NULL;
    remove_at(d, (size_t)i);
    return 0;
}

int optdict_take_bool(OptDict *d, const char *key, bool def, bool *out, Error **errp)
{
    char *v;
    optdict_take_str(d, key, NULL, &v);
    if (!v) {
        *out = def;
        return 0;
    }
    static const char *const yes[] = { "on", "true", "yes", "1" };
    static const char *const no[] = { "off", "false", "no", "0" };
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (!strcmp(v, yes[i]) || !strcmp(v, no[i])) {
            *out = !strcmp(v, yes[i]);
            free(v);
            return 0;
        }
    }
    error_setg(errp, "Invalid value '%s' for option '%s': expected 'on' or 'off'", v, key);
    free(v);
    return -EINVAL;
}

int optdict_take_int(OptDict *d, const char *key, int64_t def, int64_t *out, Error **errp)
{
    char *v;
    optdict_take_str(d, key, NULL, &v);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    bool hex = (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) ||
               (v[0] == '-' && v[1] == '0' && (v[2] == 'x' || v[2] == 'X'));
    long long n = strtoll(v, &end, hex ? 16 : 10);
    if (!*v || *end || errno == ERANGE) {
        error_setg(errp, "Invalid value '%s' for option '%s': %s", v, key,
                   errno == ERANGE ? "number out of range" : "expected an integer");
        free(v);
        return -EINVAL;
    }
    free(v);
    *out = n;
    return 0;
}

int optdict_take_size(OptDict *d, const char *key, uint64_t def, uint64_t *out, Error **errp)
{
    char *v;
    optdict_take_str(d, key, NULL, &v);
    if (!v) {
        *out = def;
        return 0;
    }
    int ret = parse_size(v, out);
    if (ret < 0) {
        error_setg(errp, "Invalid value '%s' for option '%s': %s", v, key,
                   ret == -ERANGE ? "size too large"
                                  : "expected a size in bytes, optionally with a suffix "
                                    "k, M, G, T, P or E");
        free(v);
        return -EINVAL;
    }
    free(v);
    return 0;
}

int optdict_take_enum(OptDict *d, const char *key, const char *const *choices, int def,
                      Error **errp)
{
    char *v;
    optdict_take_str(d, key, NULL, &v);
    if (!v) {
        return def;
    }
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(v, choices[i])) {
            free(v);
            return i;
        }
    }
    size_t len = 1;
    for (int i = 0; choices[i]; i++) {
        len += strlen(choices[i]) + 2;
    }
    char *list = calloc(1, len);
    if (!list) {
        abort();
    }
    for (int i = 0; choices[i]; i++) {
        if (i) {
            strcat(list, ", ");
        }
        strcat(list, choices[i]);
    }
    error_setg(errp, "Invalid value '%s' for option '%s': expected one of %s", v, key, list);
    free(list);
    free(v);
    return -EINVAL;
}

OptDict *optdict_extract_prefix(OptDict *d, const char *prefix)
{
    OptDict *sub = optdict_new();
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < d->n;) {
        if (!strncmp(d->keys[i], prefix, plen) && d->keys[i][plen]) {
            set_owned(sub, d->keys[i] + plen, d->values[i]);
            d->values[i] = NULL;
            remove_at(d, i);
        } else {
            i++;
        }
    }
    return sub;
}

int optdict_check_empty(const OptDict *d, const char *what, Error **errp)
{
    if (!d || d->n == 0) {
        return 0;
    }
    error_setg(errp, "%s does not support the option '%s'", what, d->keys[0]);
    return -EINVAL;
}
