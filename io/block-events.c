/*
 * block-events.c - events drivers report (include/block.h): formatting as
 * one JSON line, the per-type flood limit, and the sink.
 *
 * Events are rare by nature (a bad child, a failed rewrite) but can come in
 * floods when a child dies under load: every read then reports it.  The
 * limit keeps the log readable and the cost bounded; the count of what was
 * cut is itself an event, so nothing disappears silently.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "block-driver.h"

#define EVENT_TYPES_MAX 16

typedef struct EventWindow {
    char type[32];
    int64_t second;         /* CLOCK_MONOTONIC second of the window */
    unsigned in_window;     /* events let through in it */
    uint64_t suppressed;    /* cut since the last one let through */
} EventWindow;

/* Events are off the fast path (a request that finds something wrong), so
 * one mutex keeps the windows and the sink's lines whole. */
static pthread_mutex_t event_lock = PTHREAD_MUTEX_INITIALIZER;
static EventWindow windows[EVENT_TYPES_MAX];
static BdrvEventSink *event_sink;
static void *event_sink_opaque;
static uint64_t total_emitted, total_suppressed;

void bdrv_set_event_sink(BdrvEventSink *sink, void *opaque)
{
    pthread_mutex_lock(&event_lock);
    event_sink = sink;
    event_sink_opaque = opaque;
    pthread_mutex_unlock(&event_lock);
}

void bdrv_event_totals(uint64_t *emitted, uint64_t *suppressed)
{
    pthread_mutex_lock(&event_lock);
    *emitted = total_emitted;
    *suppressed = total_suppressed;
    pthread_mutex_unlock(&event_lock);
}

char *bdrv_json_escape(const char *s, char *buf, size_t len)
{
    size_t o = 0;
    if (!len) {
        return buf;
    }
    for (; s && *s && o + 7 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(buf + o, len - o, "\\u%04x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

static void emit_locked(const char *line)
{
    if (event_sink) {
        event_sink(line, event_sink_opaque);
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

static void emit_suppressed_locked(EventWindow *w)
{
    if (w->suppressed) {
        char note[160];
        snprintf(note, sizeof(note),
                 "{\"type\":\"EVENTS_SUPPRESSED\",\"event\":\"%.31s\",\"count\":%" PRIu64 "}",
                 w->type, w->suppressed);
        emit_locked(note);
        w->suppressed = 0;
    }
}

/* The window of type, or NULL when every slot is taken by other types (then
 * the event goes through unlimited rather than being lost). */
static EventWindow *window_for(const char *type)
{
    for (int i = 0; i < EVENT_TYPES_MAX; i++) {
        if (!windows[i].type[0]) {
            snprintf(windows[i].type, sizeof(windows[i].type), "%s", type);
            return &windows[i];
        }
        if (!strcmp(windows[i].type, type)) {
            return &windows[i];
        }
    }
    return NULL;
}

/* The event's JSON line into line (1024 bytes). */
static void format_event(char *line, size_t size, BlockDriverState *bs, const char *type,
                         int64_t offset, int64_t bytes, int err, const char *extra_json)
{
    char node[96], file[512], errtext[160];
    bdrv_json_escape(bs && bs->node_name ? bs->node_name : "", node, sizeof(node));
    bdrv_json_escape(bs ? bs->filename : "", file, sizeof(file));
    int n = snprintf(line, size, "{\"type\":\"%s\",\"node\":\"%s\"", type, node);
    if (file[0] && n < (int)size) {
        n += snprintf(line + n, size - (size_t)n, ",\"file\":\"%s\"", file);
    }
    if (n < (int)size) {
        n += snprintf(line + n, size - (size_t)n,
                      ",\"offset\":%" PRId64 ",\"length\":%" PRId64, offset, bytes);
    }
    if (err && n < (int)size) {
        bdrv_json_escape(strerror(-err), errtext, sizeof(errtext));
        n += snprintf(line + n, size - (size_t)n, ",\"error\":\"%s\",\"errno\":%d",
                      errtext, -err);
    }
    if (extra_json && n < (int)size) {
        n += snprintf(line + n, size - (size_t)n, "%s", extra_json);
    }
    if (n >= (int)size - 1) {
        /* Too long to be valid JSON once cut: say so in a line that is. */
        snprintf(line, size, "{\"type\":\"%s\",\"node\":\"%s\",\"offset\":%" PRId64
                 ",\"length\":%" PRId64 ",\"truncated\":true}", type, node, offset, bytes);
    } else {
        line[n++] = '}';
        line[n] = '\0';
    }
}

void bdrv_event(BlockDriverState *bs, const char *type, int64_t offset, int64_t bytes, int err,
                const char *extra_json)
{
    char line[1024];
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);

    /* The limit first: in a flood (a dead child fails every read) the cut
     * events cost a lock and a counter, not the formatting. */
    pthread_mutex_lock(&event_lock);
    EventWindow *w = window_for(type);
    if (w) {
        if (w->second != ts.tv_sec) {
            w->second = ts.tv_sec;
            w->in_window = 0;
        }
        if (w->in_window >= BDRV_EVENTS_PER_SEC) {
            w->suppressed++;
            total_suppressed++;
            pthread_mutex_unlock(&event_lock);
            return;
        }
        w->in_window++;
        emit_suppressed_locked(w);
    }
    format_event(line, sizeof(line), bs, type, offset, bytes, err, extra_json);
    total_emitted++;
    emit_locked(line);
    pthread_mutex_unlock(&event_lock);
}

void bdrv_event_flush(void)
{
    pthread_mutex_lock(&event_lock);
    for (int i = 0; i < EVENT_TYPES_MAX && windows[i].type[0]; i++) {
        EventWindow *w = &windows[i];
        emit_suppressed_locked(w);
    }
    pthread_mutex_unlock(&event_lock);
}
