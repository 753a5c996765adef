/* error.c - see include/error.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "error.h"

struct Error {
    char *msg;
    int err;
};

static const char *progname = "ublkd";

void error_set_progname(const char *name)
{
    progname = name;
}

void error_vsetg(Error **errp, int os_errno, const char *fmt, va_list ap)
{
    if (!errp) {
        return;
    }
    if (*errp) {
        /* Setting an error twice is a bug in the caller: keep the first. */
        fprintf(stderr, "%s: internal: error set twice, dropping: ", progname);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        return;
    }
    Error *e = calloc(1, sizeof(*e));
    if (!e) {
        abort();
    }
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) {
        abort();
    }
    if (os_errno) {
        char *full = NULL;
        if (asprintf(&full, "%s: %s", msg, strerror(os_errno)) < 0) {
            abort();
        }
        free(msg);
        msg = full;
    }
    e->msg = msg;
    e->err = os_errno ? os_errno : EINVAL;
    *errp = e;
}

void error_setg(Error **errp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vsetg(errp, 0, fmt, ap);
    va_end(ap);
}

void error_setg_code(Error **errp, int code, const char *fmt, ...)
{
    bool was_set = errp && *errp;
    va_list ap;
    va_start(ap, fmt);
    error_vsetg(errp, 0, fmt, ap);
    va_end(ap);
    if (errp && *errp && !was_set) {
        (*errp)->err = code < 0 ? -code : code;
    }
}

void error_setg_errno(Error **errp, int os_errno, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vsetg(errp, os_errno < 0 ? -os_errno : os_errno, fmt, ap);
    va_end(ap);
}

void error_prepend(Error **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    char *prefix = NULL, *full = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&prefix, fmt, ap) < 0) {
        abort();
    }
    va_end(ap);
    if (asprintf(&full, "%s%s", prefix, (*errp)->msg) < 0) {
        abort();
    }
    free(prefix);
    free((*errp)->msg);
    (*errp)->msg = full;
}

void error_propagate(Error **dst, Error *local)
{
    if (!local) {
        return;
    }
    if (dst && !*dst) {
        *dst = local;
    } else {
        error_free(local);
    }
}

const char *error_get_pretty(const Error *err)
{
    return err ? err->msg : "";
}

int error_get_errno(const Error *err)
{
    return err ? err->err : 0;
}

void error_free(Error *err)
{
    if (err) {
        free(err->msg);
        free(err);
    }
}

void error_report_err(Error *err)
{
    if (err) {
        fprintf(stderr, "%s: %s\n", progname, err->msg);
        error_free(err);
    }
}

static void report(const char *kind, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: %s", progname, kind);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void error_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("", fmt, ap);
    va_end(ap);
}

void warn_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("warning: ", fmt, ap);
    va_end(ap);
}
