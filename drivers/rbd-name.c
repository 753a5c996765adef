/*
 * rbd-name.c - QEMU 7.2's `rbd:` filename syntax, parsed into an RbdSpec:
 *
 *   rbd:pool/[namespace/]image[@snapshot][:key=value]...
 *
 * '\' escapes the next character anywhere (`\:` for a ':' in a value, `\@`,
 * `\/`, `\\`).  "conf" names a Ceph configuration file, "id" the user (without
 * "client."); any other key is a Ceph option (mon_host, keyring, ...).
 * QEMU looks for the '@' in the whole rest of the name, so a '@' in a conf
 * path is taken as a snapshot there; here the snapshot is only looked for in
 * the image part, before the first unescaped ':'.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "rbd-int.h"

/* Cut src at the first unescaped delim: returns src (now ending there) and
 * points *rest past the delimiter, or NULL if there was none. */
static char *next_tok(char *src, char delim, char **rest)
{
    char *end;
    *rest = NULL;
    for (end = src; *end; end++) {
        if (*end == delim) {
            break;
        }
        if (*end == '\\' && end[1]) {
            end++;
        }
    }
    if (*end == delim) {
        *end = '\0';
        *rest = end + 1;
    }
    return src;
}

static char *unescape_dup(const char *src)
{
    char *out = malloc(strlen(src) + 1), *p = out;
    if (!out) {
        abort();
    }
    for (; *src; src++) {
        if (*src == '\\' && src[1]) {
            src++;
        }
        *p++ = *src;
    }
    *p = '\0';
    return out;
}

void rbd_spec_free(RbdSpec *spec)
{
    free(spec->pool);
    free(spec->ns);
    free(spec->image);
    free(spec->snap);
    free(spec->conf);
    free(spec->user);
    for (int i = 0; i < spec->nkv; i++) {
        free(spec->keys[i]);
        free(spec->values[i]);
    }
    free(spec->keys);
    free(spec->values);
    memset(spec, 0, sizeof(*spec));
}

static void add_pair(RbdSpec *spec, char *key, char *value)
{
    char **k = realloc(spec->keys, (size_t)(spec->nkv + 1) * sizeof(*k));
    if (!k) {
        abort();
    }
    spec->keys = k;
    char **v = realloc(spec->values, (size_t)(spec->nkv + 1) * sizeof(*v));
    if (!v) {
        abort();
    }
    spec->values = v;
    spec->keys[spec->nkv] = key;
    spec->values[spec->nkv] = value;
    spec->nkv++;
}

static int parse(char *p, RbdSpec *spec, Error **errp)
{
    char *pool = next_tok(p, '/', &p);
    if (!p) {
        error_setg(errp, "Pool name is required");
        return -EINVAL;
    }
    spec->pool = unescape_dup(pool);

    char *opts;
    char *image = next_tok(p, ':', &opts);
    char *snap;
    image = next_tok(image, '@', &snap);
    if (snap) {
        spec->snap = unescape_dup(snap);
    }
    char *rest;
    char *ns = next_tok(image, '/', &rest);
    if (rest) {
        spec->ns = unescape_dup(ns);
        image = rest;
    }
    spec->image = unescape_dup(image);

    for (p = opts; p;) {
        char *key = next_tok(p, '=', &p);
        if (!p) {
            char *k = unescape_dup(key);
            error_setg(errp, "conf option %s has no value", k);
            free(k);
            return -EINVAL;
        }
        char *value = next_tok(p, ':', &p);
        char *k = unescape_dup(key), *v = unescape_dup(value);
        char **slot = !strcmp(k, "conf") ? &spec->conf : !strcmp(k, "id") ? &spec->user : NULL;
        if (slot) {
            free(*slot);   /* the last one counts, as in QEMU */
            *slot = v;
            free(k);
        } else if (!*k) {
            error_setg(errp, "rbd: an empty option name in the filename");
            free(k);
            free(v);
            return -EINVAL;
        } else {
            add_pair(spec, k, v);
        }
    }
    return 0;
}

int rbd_parse_filename(const char *filename, RbdSpec *spec, Error **errp)
{
    memset(spec, 0, sizeof(*spec));
    if (strncmp(filename, "rbd:", 4) != 0) {
        error_setg(errp, "File name must start with 'rbd:'");
        return -EINVAL;
    }
    char *buf = strdup(filename + 4);
    if (!buf) {
        abort();
    }
    int ret = parse(buf, spec, errp);
    free(buf);
    if (ret < 0) {
        rbd_spec_free(spec);
    }
    return ret;
}
