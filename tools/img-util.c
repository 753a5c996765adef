/*
 * img-util.c - the pure logic behind `ublkd img`: no I/O, no block layer.
 *
 * Everything here reproduces a qemu-img/qemu-io 7.2 behaviour that users and
 * scripts see (number syntax, size strings, map output, JSON key order), so
 * it is kept apart and unit-tested (tests/unit/test-img-parse.c).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "img.h"

static int suffix_shift(char c)
{
    switch (c) {
    case 'b': case 'B': return 0;
    case 'k': case 'K': return 10;
    case 'm': case 'M': return 20;
    case 'g': case 'G': return 30;
    case 't': case 'T': return 40;
    case 'p': case 'P': return 50;
    case 'e': case 'E': return 60;
    default: return -1;
    }
}

int img_parse_size(const char *str, char default_suffix, uint64_t *out)
{
    const char *p = str;
    while (isspace((unsigned char)*p)) {
        p++;
    }
    /* qemu rejects negative numbers outright (strtoull would wrap them). */
    if (*p == '-' || !*p) {
        return -EINVAL;
    }
    errno = 0;
    char *end;
    uint64_t ival;
    double frac = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        ival = strtoull(p, &end, 16);
        if (end == p + 2) {
            return -EINVAL;
        }
    } else {
        ival = strtoull(p, &end, 10);
        if (end == p) {
            return -EINVAL;
        }
        if (*end == '.') {
            char *fend;
            frac = strtod(end, &fend);
            if (fend == end + 1 && !isdigit((unsigned char)end[1])) {
                /* "1." is accepted by qemu as 1 */
                fend = end + 1;
            }
            end = fend;
        }
    }
    if (errno == ERANGE) {
        return -ERANGE;
    }
    int shift = suffix_shift(default_suffix);
    if (*end) {
        shift = suffix_shift(*end);
        if (shift < 0) {
            return -EINVAL;
        }
        end++;
    }
    if (*end) {
        return -EINVAL;
    }
    /* Fractions of a byte make no sense; qemu refuses them. */
    if (frac != 0 && shift == 0) {
        return -EINVAL;
    }
    if (shift >= 64 || (shift && ival > (UINT64_MAX >> shift))) {
        return -ERANGE;
    }
    uint64_t val = ival << shift;
    if (frac != 0) {
        double extra = frac * (double)(1ULL << shift);
        if ((double)val + extra >= 18446744073709551616.0) {
            return -ERANGE;
        }
        val += (uint64_t)extra;
    }
    *out = val;
    return 0;
}

int64_t img_cvtnum(const char *str)
{
    uint64_t v;
    int ret = img_parse_size(str, 'B', &v);
    if (ret < 0) {
        return ret;
    }
    if (v > INT64_MAX) {
        return -ERANGE;
    }
    return (int64_t)v;
}

char *img_size_to_str(uint64_t val)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    /* Switch to the next unit once the integer part reaches 1000 (qemu's rule). */
    int i = 0;
    while (i < 6 && (double)val >= 1000.0 * (double)(1ULL << (10 * i))) {
        i++;
    }
    uint64_t div = 1ULL << (i * 10);
    char *s = NULL;
    if (asprintf(&s, "%0.3g %sB", (double)val / div, suffixes[i]) < 0) {
        abort();
    }
    return s;
}

void img_cvtstr(double value, char *str, size_t size)
{
    static const char *const units[] = { " KiB", " MiB", " GiB", " TiB", " PiB", " EiB" };
    int i = (int)ARRAY_SIZE(units);
    while (i > 0 && value < (double)(1ULL << (10 * i))) {
        i--;
    }
    const char *suffix;
    if (i) {
        suffix = units[i - 1];
        snprintf(str, size - 4, "%.3f", value / (double)(1ULL << (10 * i)));
    } else {
        suffix = " bytes";
        snprintf(str, size - 6, "%f", value);
    }
    char *trim = strstr(str, ".000");
    if (trim) {
        strcpy(trim, suffix);
    } else {
        strcat(str, suffix);
    }
}

void img_timestr(double seconds, char *ts, size_t size)
{
    unsigned long sec = (unsigned long)seconds;
    double frac = seconds - (double)sec;
    if (sec) {
        snprintf(ts, size, "%lu:%02lu:%05.2f", sec / 3600, (sec / 60) % 60,
                 (double)(sec % 60) + frac);
    } else {
        snprintf(ts, size, "%05.2f sec", frac);
    }
}

static bool mem_is_zero(const uint8_t *buf, size_t len)
{
    /* Check a short head directly, then compare the buffer with itself
     * shifted: memcmp is vectorised, a byte loop is not. */
    size_t head = len < 16 ? len : 16;
    for (size_t i = 0; i < head; i++) {
        if (buf[i]) {
            return false;
        }
    }
    return len <= 16 || memcmp(buf, buf + 16, len - 16) == 0;
}

size_t img_sparse_run(const uint8_t *buf, size_t len, int64_t offset, size_t min_sparse,
                      bool *is_data)
{
    if (min_sparse == 0 || len == 0) {
        *is_data = true;
        return len;
    }
    size_t pos = 0;
    bool first = true, status = true;
    while (pos < len) {
        uint64_t abs = (uint64_t)offset + pos;
        size_t cell = min_sparse - abs % min_sparse;
        if (cell > len - pos) {
            cell = len - pos;
        }
        bool data = !mem_is_zero(buf + pos, cell);
        if (first) {
            status = data;
            first = false;
        } else if (data != status) {
            break;
        }
        pos += cell;
    }
    *is_data = status;
    return pos;
}

int64_t img_find_nonzero(const uint8_t *buf, int64_t n)
{
    int64_t end = n & ~(int64_t)511;
    int64_t i;
    for (i = 0; i < end; i += 512) {
        if (!mem_is_zero(buf + i, 512)) {
            return i;
        }
    }
    if (i < n && !mem_is_zero(buf + i, n - end)) {
        return i;
    }
    return -1;
}

bool img_compare_buffers(const uint8_t *a, const uint8_t *b, int64_t bytes, int64_t *pnum)
{
    int64_t i = bytes < 512 ? bytes : 512;
    bool res = memcmp(a, b, i) != 0;
    while (i < bytes) {
        int64_t len = bytes - i < 512 ? bytes - i : 512;
        if ((memcmp(a + i, b + i, len) != 0) != res) {
            break;
        }
        i += len;
    }
    *pnum = i;
    return res;
}

bool img_map_entry_mergeable(const ImgMapEntry *curr, const ImgMapEntry *next)
{
    if (curr->length == 0) {
        return false;
    }
    if (curr->zero != next->zero || curr->data != next->data || curr->depth != next->depth ||
        curr->present != next->present || !curr->filename != !next->filename ||
        curr->has_offset != next->has_offset) {
        return false;
    }
    if (curr->filename && strcmp(curr->filename, next->filename)) {
        return false;
    }
    if (curr->has_offset && curr->offset + curr->length != next->offset) {
        return false;
    }
    return true;
}

int img_map_dump_entry(FILE *f, OutputFormat fmt, const ImgMapEntry *e, ImgMapEntry *next)
{
    if (fmt == OFORMAT_HUMAN) {
        if (e->data && !e->has_offset) {
            return -1;
        }
        if (e->data && !e->zero) {
            fprintf(f, "%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                    (uint64_t)e->start, (uint64_t)e->length,
                    (uint64_t)(e->has_offset ? e->offset : 0), e->filename ? e->filename : "");
        }
        /* The human form does not tell zero from unallocated: merge them. */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return 0;
    }
#ifdef CONFIG_JSON
    struct json_object *o = img_map_entry_to_json(e);
    img_json_print_inline(f, o);
    json_object_put(o);
    if (next) {
        fputs(",\n", f);
    }
    return 0;
#else
    (void)f;
    return -1;
#endif
}

#ifdef CONFIG_JSON
struct json_object *img_map_entry_to_json(const ImgMapEntry *e)
{
    /* Insertion order is qemu-img's print order. */
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "start", json_object_new_int64(e->start));
    json_object_object_add(o, "length", json_object_new_int64(e->length));
    json_object_object_add(o, "depth", json_object_new_int64(e->depth));
    json_object_object_add(o, "present", json_object_new_boolean(e->present));
    json_object_object_add(o, "zero", json_object_new_boolean(e->zero));
    json_object_object_add(o, "data", json_object_new_boolean(e->data));
    if (e->has_offset) {
        json_object_object_add(o, "offset", json_object_new_int64(e->offset));
    }
    return o;
}
#endif

unsigned img_qdict_bucket(const char *key)
{
    /* qemu's tdb_hash() modulo QDICT_BUCKET_MAX (512). */
    unsigned value = 0x238F13AF * (unsigned)strlen(key);
    for (unsigned i = 0; key[i]; i++) {
        value = value + ((unsigned)(unsigned char)key[i] << (i * 5 % 24));
    }
    return (1103515243 * value + 12345) % 512;
}

void img_fill_pattern(void *buf, size_t len, int pattern)
{
    memset(buf, pattern, len);
}

void img_dump_buffer(FILE *f, const void *buffer, int64_t offset, int64_t len)
{
    const uint8_t *p = buffer;
    for (int64_t i = 0; i < len; i += 16) {
        const uint8_t *s = p;
        fprintf(f, "%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (int j = 0; j < 16 && i + j < len; j++, p++) {
            fprintf(f, "%02x ", *p);
        }
        fputc(' ', f);
        for (int j = 0; j < 16 && i + j < len; j++, s++) {
            fputc(isalnum(*s) ? *s : '.', f);
        }
        fputc('\n', f);
    }
}
