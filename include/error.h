/*
 * error.h - error objects for user-facing failures.
 *
 * Open, create, option parsing and image validation report failures through an
 * `Error **errp` out-parameter (the pattern of QEMU's block layer): the callee
 * sets a message that says what failed and where ("vdi: disk.vdi: unsupported
 * block size 65536 (must be 1048576)"), the caller either propagates it,
 * prepends context, or prints it.  errp may be NULL (the caller does not care)
 * but an Error must never be set twice.  The I/O path does not use this: it
 * returns -errno.
 */
#ifndef UBLKD_ERROR_H
#define UBLKD_ERROR_H

#include <stdarg.h>
#include "compiler.h"

typedef struct Error Error;

void error_setg(Error **errp, const char *fmt, ...) PRINTF_FMT(2, 3);
/* Appends ": strerror(os_errno)" and remembers the errno (error_get_errno). */
void error_setg_errno(Error **errp, int os_errno, const char *fmt, ...) PRINTF_FMT(3, 4);
void error_vsetg(Error **errp, int os_errno, const char *fmt, va_list ap);
/* Like error_setg, but error_get_errno returns code (no strerror appended):
 * for failures a caller may act on, e.g. EAGAIN for "image locked". */
void error_setg_code(Error **errp, int code, const char *fmt, ...) PRINTF_FMT(3, 4);
/* Prefix the message of *errp (no-op if errp or *errp is NULL). */
void error_prepend(Error **errp, const char *fmt, ...) PRINTF_FMT(2, 3);
/* Move local into *dst; frees local if dst is NULL or already set. */
void error_propagate(Error **dst, Error *local);

const char *error_get_pretty(const Error *err);
/* The errno given to error_setg_errno, or EINVAL for plain errors. */
int error_get_errno(const Error *err);
void error_free(Error *err);
/* Print "ublkd: <message>" (or the program name set below) to stderr and free. */
void error_report_err(Error *err);
/* Print a formatted message to stderr with the program prefix. */
void error_report(const char *fmt, ...) PRINTF_FMT(1, 2);
void warn_report(const char *fmt, ...) PRINTF_FMT(1, 2);
void error_set_progname(const char *name);

#endif
