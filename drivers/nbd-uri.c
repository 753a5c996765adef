/*
 * nbd-uri.c - where an NBD server is, as QEMU 7.2 names it: the URL forms
 * nbd://host[:port]/export, nbd+tcp://, nbd+unix:///export?socket=PATH
 * (nbds:// asks for TLS), or the options server.type=inet|unix,
 * server.host, server.port, server.path and export.  Also the TLS
 * credential objects (--object tls-creds-psk|tls-creds-x509).  Pure
 * parsing, no connection: tests/unit/test-nbd-uri.c covers it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nbd-int.h"

void nbd_addr_free(NbdAddr *a)
{
    free(a->host);
    free(a->port);
    free(a->path);
    free(a->export_name);
    memset(a, 0, sizeof(*a));
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (!p) {
        abort();
    }
    return p;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* %XX decoding of [s, s+n); NULL for a bad escape or an embedded NUL. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = xstrndup(s, n), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0) {
            free(out);
            return NULL;
        }
        char c = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
        if (!c) {
            free(out);
            return NULL;
        }
        *o++ = c;
        i += 2;
    }
    *o = 0;
    return out;
}

static bool valid_port(const char *p)
{
    if (!*p || strlen(p) > 5) {
        return false;
    }
    long v = 0;
    for (const char *c = p; *c; c++) {
        if (*c < '0' || *c > '9') {
            return false;
        }
        v = v * 10 + (*c - '0');
    }
    return v > 0 && v < 65536;
}

int nbd_parse_url(const char *url, NbdAddr *a, Error **errp)
{
    memset(a, 0, sizeof(*a));
    const char *rest;
    static const struct { const char *scheme; bool is_unix, tls; } schemes[] = {
        { "nbd://", false, false }, { "nbd+tcp://", false, false },
        { "nbd+unix://", true, false }, { "nbds://", false, true },
        { "nbds+tcp://", false, true }, { "nbds+unix://", true, true },
    };
    size_t i;
    for (i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        size_t l = strlen(schemes[i].scheme);
        if (!strncmp(url, schemes[i].scheme, l)) {
            rest = url + l;
            a->is_unix = schemes[i].is_unix;
            a->tls_from_url = schemes[i].tls;
            break;
        }
    }
    if (i == sizeof(schemes) / sizeof(schemes[0])) {
        error_setg(errp, "NBD URL '%s': unknown scheme (nbd://, nbd+tcp://, nbd+unix://)", url);
        return -EINVAL;
    }
    /* authority up to the first '/' or '?' */
    size_t alen = strcspn(rest, "/?#");
    const char *auth = rest, *p = rest + alen;
    if (a->is_unix) {
        if (alen) {
            error_setg(errp, "NBD URL '%s': nbd+unix:// takes no host (nbd+unix:///export?socket=PATH)",
                       url);
            goto fail;
        }
    } else if (!alen) {
        error_setg(errp, "NBD URL '%s': no server host", url);
        goto fail;
    } else {
        const char *colon;
        if (auth[0] == '[') {
            const char *close = memchr(auth, ']', alen);
            if (!close) {
                error_setg(errp, "NBD URL '%s': unterminated '[' in the host", url);
                goto fail;
            }
            a->host = xstrndup(auth + 1, (size_t)(close - auth - 1));
            colon = close + 1 < p && close[1] == ':' ? close + 1 : NULL;
            if (!colon && close + 1 != p) {
                error_setg(errp, "NBD URL '%s': junk after the host", url);
                goto fail;
            }
        } else {
            colon = memchr(auth, ':', alen);
            a->host = xstrndup(auth, colon ? (size_t)(colon - auth) : alen);
        }
        if (!*a->host) {
            error_setg(errp, "NBD URL '%s': no server host", url);
            goto fail;
        }
        if (colon) {
            a->port = xstrndup(colon + 1, (size_t)(p - colon - 1));
            if (!valid_port(a->port)) {
                error_setg(errp, "NBD URL '%s': bad port '%s'", url, a->port);
                goto fail;
            }
        }
    }
    if (*p == '#') {
        error_setg(errp, "NBD URL '%s': a fragment is not allowed", url);
        goto fail;
    }
    /* path: the export name without its leading '/' (QEMU's rule) */
    size_t plen = strcspn(p, "?#");
    const char *path = *p == '/' ? p + 1 : p;
    size_t elen = plen - (size_t)(path - p);
    a->export_name = pct_decode(path, elen);
    if (!a->export_name) {
        error_setg(errp, "NBD URL '%s': bad %%-escape in the export name", url);
        goto fail;
    }
    const char *q = p + plen;
    if (*q == '#') {
        error_setg(errp, "NBD URL '%s': a fragment is not allowed", url);
        goto fail;
    }
    if (*q == '?') {
        q++;
        while (*q) {
            size_t l = strcspn(q, "&#");
            if (q[l] == '#') {
                error_setg(errp, "NBD URL '%s': a fragment is not allowed", url);
                goto fail;
            }
            if (a->is_unix && !strncmp(q, "socket=", 7) && l > 7 && !a->path) {
                a->path = pct_decode(q + 7, l - 7);
                if (!a->path) {
                    error_setg(errp, "NBD URL '%s': bad %%-escape in the socket path", url);
                    goto fail;
                }
            } else {
                error_setg(errp, "NBD URL '%s': unexpected query parameter '%.*s'", url,
                           (int)l, q);
                goto fail;
            }
            q += l;
            if (*q == '&') {
                q++;
            }
        }
    }
    if (a->is_unix && !a->path) {
        error_setg(errp, "NBD URL '%s': nbd+unix:// needs ?socket=PATH", url);
        goto fail;
    }
    if (!a->is_unix && !a->port) {
        char buf[8];
        snprintf(buf, sizeof(buf), "%d", NBD_DEFAULT_PORT);
        a->port = xstrndup(buf, strlen(buf));
    }
    return 0;
fail:
    nbd_addr_free(a);
    return -EINVAL;
}

int nbd_addr_from_options(OptDict *options, NbdAddr *a, Error **errp)
{
    char *filename = NULL, *type = NULL, *host = NULL, *port = NULL, *path = NULL,
         *export_name = NULL;
    int ret = -EINVAL;
    optdict_take_str(options, "filename", NULL, &filename);
    optdict_take_str(options, "server.type", NULL, &type);
    optdict_take_str(options, "server.host", NULL, &host);
    optdict_take_str(options, "server.port", NULL, &port);
    optdict_take_str(options, "server.path", NULL, &path);
    optdict_take_str(options, "export", NULL, &export_name);
    memset(a, 0, sizeof(*a));
    if (filename && *filename && (type || host || port || path || export_name)) {
        error_setg(errp, "nbd: a URL ('%s') and server/export options cannot be used together",
                   filename);
        goto out;
    }
    if (filename && *filename) {
        ret = nbd_parse_url(filename, a, errp);
        goto out;
    }
    if (!type) {
        error_setg(errp, "nbd: no server given (a URL such as nbd://HOST:PORT/EXPORT, or "
                   "server.type=inet|unix with server.host/server.port or server.path)");
        goto out;
    }
    if (!strcmp(type, "unix")) {
        if (!path || !*path || host || port) {
            error_setg(errp, "nbd: server.type=unix needs server.path (and no server.host/port)");
            goto out;
        }
        a->is_unix = true;
        a->path = path;
        path = NULL;
    } else if (!strcmp(type, "inet")) {
        if (!host || !*host || path) {
            error_setg(errp, "nbd: server.type=inet needs server.host (and no server.path)");
            goto out;
        }
        if (port && !valid_port(port)) {
            error_setg(errp, "nbd: bad server.port '%s'", port);
            goto out;
        }
        a->host = host;
        host = NULL;
        if (!port) {
            char buf[8];
            snprintf(buf, sizeof(buf), "%d", NBD_DEFAULT_PORT);
            port = xstrndup(buf, strlen(buf));
        }
        a->port = port;
        port = NULL;
    } else {
        error_setg(errp, "nbd: server.type '%s' is not supported (inet or unix)", type);
        goto out;
    }
    a->export_name = export_name ? export_name : xstrndup("", 0);
    export_name = NULL;
    ret = 0;
out:
    if (ret < 0) {
        nbd_addr_free(a);
    }
    free(filename);
    free(type);
    free(host);
    free(port);
    free(path);
    free(export_name);
    return ret;
}

char *nbd_addr_describe(const NbdAddr *a)
{
    char *s = NULL;
    int r;
    if (a->is_unix) {
        r = asprintf(&s, "unix:%s", a->path);
    } else if (strchr(a->host, ':')) {
        r = asprintf(&s, "[%s]:%s", a->host, a->port);
    } else {
        r = asprintf(&s, "%s:%s", a->host, a->port);
    }
    if (r < 0) {
        abort();
    }
    return s;
}

/* ---- TLS credentials ---- */

typedef struct TlsObj {
    char *id;
    NbdTlsCreds c;
    struct TlsObj *next;
} TlsObj;

static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static TlsObj *tls_objs;

int nbd_tls_object_add(const char *def, Error **errp)
{
    OptDict *d = optdict_parse(def, "qom-type", errp);
    if (!d) {
        return -EINVAL;
    }
    int ret = -EINVAL;
    const char *type = optdict_get(d, "qom-type");
    bool psk = type && !strcmp(type, "tls-creds-psk");
    if (!type || (!psk && strcmp(type, "tls-creds-x509"))) {
        ret = 0;
        goto out;
    }
    const char *id = optdict_get(d, "id"), *dir = optdict_get(d, "dir"),
               *endpoint = optdict_get(d, "endpoint"), *user = optdict_get(d, "username"),
               *verify = optdict_get(d, "verify-peer");
    if (!id || !*id) {
        error_setg(errp, "Parameter 'id' is missing");
        goto out;
    }
    if (!dir || !*dir) {
        error_setg(errp, "%s '%s': parameter 'dir' is missing", type, id);
        goto out;
    }
    if (endpoint && strcmp(endpoint, "client")) {
        error_setg(errp, "%s '%s': only endpoint=client is supported (ublkd is an NBD client)",
                   type, id);
        goto out;
    }
    if (user && !psk) {
        error_setg(errp, "%s '%s': 'username' is for tls-creds-psk", type, id);
        goto out;
    }
    if (verify && psk) {
        error_setg(errp, "%s '%s': 'verify-peer' is for tls-creds-x509", type, id);
        goto out;
    }
    bool verify_peer = true;
    if (verify) {
        if (!strcmp(verify, "on") || !strcmp(verify, "yes") || !strcmp(verify, "true")) {
            verify_peer = true;
        } else if (!strcmp(verify, "off") || !strcmp(verify, "no") || !strcmp(verify, "false")) {
            verify_peer = false;
        } else {
            error_setg(errp, "%s '%s': verify-peer must be on or off, not '%s'", type, id, verify);
            goto out;
        }
    }
    for (size_t i = 0; i < optdict_count(d); i++) {
        const char *k = optdict_key_at(d, i);
        if (strcmp(k, "qom-type") && strcmp(k, "id") && strcmp(k, "dir") &&
            strcmp(k, "endpoint") && strcmp(k, "username") && strcmp(k, "verify-peer")) {
            error_setg(errp, "%s '%s': parameter '%s' is not supported", type, id, k);
            goto out;
        }
    }
    pthread_mutex_lock(&tls_lock);
    for (TlsObj *o = tls_objs; o; o = o->next) {
        if (!strcmp(o->id, id)) {
            pthread_mutex_unlock(&tls_lock);
            error_setg(errp, "attempt to add duplicate property '%s' to object (type"
                       " 'container')", id);
            ret = -EEXIST;
            goto out;
        }
    }
    TlsObj *o = calloc(1, sizeof(*o));
    if (!o) {
        abort();
    }
    o->id = xstrndup(id, strlen(id));
    o->c.psk = psk;
    o->c.dir = xstrndup(dir, strlen(dir));
    o->c.username = psk ? xstrndup(user ? user : "qemu", strlen(user ? user : "qemu")) : NULL;
    o->c.verify_peer = verify_peer;
    o->next = tls_objs;
    tls_objs = o;
    pthread_mutex_unlock(&tls_lock);
    ret = 1;
out:
    optdict_free(d);
    return ret;
}

const NbdTlsCreds *nbd_tls_lookup(const char *id, Error **errp)
{
    pthread_mutex_lock(&tls_lock);
    for (TlsObj *o = tls_objs; o; o = o->next) {
        if (!strcmp(o->id, id)) {
            pthread_mutex_unlock(&tls_lock);
            return &o->c;   /* objects live until nbd_tls_clear_all (exit) */
        }
    }
    pthread_mutex_unlock(&tls_lock);
    error_setg(errp, "No TLS credentials with id '%s'", id);
    return NULL;
}

void nbd_tls_clear_all(void)
{
    pthread_mutex_lock(&tls_lock);
    while (tls_objs) {
        TlsObj *o = tls_objs;
        tls_objs = o->next;
        free(o->id);
        free(o->c.dir);
        free(o->c.username);
        free(o);
    }
    pthread_mutex_unlock(&tls_lock);
}
