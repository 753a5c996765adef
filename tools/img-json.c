/*
 * img-json.c - print json-c objects the way qemu-img prints its QObjects.
 *
 * qemu-img's --output=json comes from a QDict: keys appear in hash-bucket
 * order (not insertion order) and nesting is indented by four spaces.
 * Scripts and tests diff that output, so objects are built with json-c and
 * serialised here in qemu's layout; json-c's own printer differs in both.
 */
#ifdef CONFIG_JSON
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "img.h"

typedef struct {
    char *buf;
    size_t len, cap;
} Out;

static void out_add(Out *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->buf = realloc(o->buf, o->cap);
        if (!o->buf) {
            abort();
        }
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void out_str(Out *o, const char *s)
{
    out_add(o, s, strlen(s));
}

static void out_indent(Out *o, int level)
{
    for (int i = 0; i < level; i++) {
        out_str(o, "    ");
    }
}

static void out_quoted(Out *o, const char *s)
{
    out_str(o, "\"");
    for (; *s; s++) {
        char esc[8];
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '"':  out_str(o, "\\\""); break;
        case '\\': out_str(o, "\\\\"); break;
        case '\n': out_str(o, "\\n"); break;
        case '\r': out_str(o, "\\r"); break;
        case '\t': out_str(o, "\\t"); break;
        case '\b': out_str(o, "\\b"); break;
        case '\f': out_str(o, "\\f"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                out_str(o, esc);
            } else {
                out_add(o, (const char *)&c, 1);
            }
        }
    }
    out_str(o, "\"");
}

typedef struct {
    const char *key;
    struct json_object *val;
    unsigned bucket;
    int order;
} Member;

static int member_cmp(const void *a, const void *b)
{
    const Member *x = a, *y = b;
    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* Within a bucket QDict lists the most recently inserted key first. */
    return y->order - x->order;
}

static void out_value(Out *o, struct json_object *v, int level)
{
    char num[64];
    switch (json_object_get_type(v)) {
    case json_type_null:
        out_str(o, "null");
        break;
    case json_type_boolean:
        out_str(o, json_object_get_boolean(v) ? "true" : "false");
        break;
    case json_type_int:
        snprintf(num, sizeof(num), "%lld", (long long)json_object_get_int64(v));
        out_str(o, num);
        break;
    case json_type_double:
        snprintf(num, sizeof(num), "%.17g", json_object_get_double(v));
        out_str(o, num);
        break;
    case json_type_string:
        out_quoted(o, json_object_get_string(v));
        break;
    case json_type_array: {
        size_t n = json_object_array_length(v);
        out_str(o, "[");
        for (size_t i = 0; i < n; i++) {
            out_str(o, i ? ",\n" : "\n");
            out_indent(o, level + 1);
            out_value(o, json_object_array_get_idx(v, i), level + 1);
        }
        out_str(o, "\n");
        out_indent(o, level);
        out_str(o, "]");
        break;
    }
    case json_type_object: {
        int n = json_object_object_length(v), i = 0;
        Member *m = calloc(n ? n : 1, sizeof(*m));
        if (!m) {
            abort();
        }
        json_object_object_foreach(v, key, val) {
            m[i] = (Member){ key, val, img_qdict_bucket(key), i };
            i++;
        }
        qsort(m, n, sizeof(*m), member_cmp);
        out_str(o, "{");
        for (i = 0; i < n; i++) {
            out_str(o, i ? ",\n" : "\n");
            out_indent(o, level + 1);
            out_quoted(o, m[i].key);
            out_str(o, ": ");
            out_value(o, m[i].val, level + 1);
        }
        out_str(o, "\n");
        out_indent(o, level);
        out_str(o, "}");
        free(m);
        break;
    }
    }
}

/*
 * qemu-img map's one-line entries: members in insertion order, "{ " before
 * the first, ", " between, "}" right after the last.  qemu-img prints these
 * with printf; the fixed order is part of its output format.
 */
static void out_inline(Out *o, struct json_object *v)
{
    if (json_object_get_type(v) != json_type_object) {
        out_value(o, v, 0);
        return;
    }
    bool first = true;
    out_str(o, "{ ");
    json_object_object_foreach(v, key, val) {
        if (!first) {
            out_str(o, ", ");
        }
        first = false;
        out_quoted(o, key);
        out_str(o, ": ");
        out_inline(o, val);
    }
    out_str(o, "}");
}

void img_json_print_inline(FILE *f, struct json_object *obj)
{
    Out o = { 0 };
    out_inline(&o, obj);
    fputs(o.buf, f);
    free(o.buf);
}

char *img_json_to_string(struct json_object *obj)
{
    Out o = { 0 };
    out_value(&o, obj, 0);
    return o.buf;
}

void img_json_print(FILE *f, struct json_object *obj)
{
    char *s = img_json_to_string(obj);
    fprintf(f, "%s\n", s);
    free(s);
}
#else
/* Built without json-c: the subcommands refuse --output=json instead. */
typedef int img_json_unused;
#endif
