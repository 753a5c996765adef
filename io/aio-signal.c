/*
 * aio-signal.c - signals as events of an AioContext (see include/aio.h).
 *
 * The signals are blocked (by the caller, in every thread) and read from a
 * signalfd, so their callback runs in the loop like any completion, with no
 * async-signal-safety rules.  The signalfd is non-blocking and watched with
 * a one-shot POLL_ADD on the ring; the completion reads every queued signal
 * with read(2) and re-arms.  A READ of the signalfd on the ring would do the
 * same in one step, but a blocking one is handed to an io-wq worker, and a
 * non-blocking one may complete with -EAGAIN instead of waiting (see the
 * eventfd in aio.c): the poll keeps it on the owner thread on every kernel.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "aio.h"

struct AioSignalWatch {
    AioContext *ctx;
    int fd;
    AioCompletion comp;
    AioSignalFn *cb;
    void *opaque;
    bool armed;                  /* a POLL_ADD is in the kernel */
    bool closing;                /* aio_signal_watch_free waits for it */
};

static void watch_arm(AioSignalWatch *w)
{
    struct io_uring_sqe *sqe = aio_get_sqe(w->ctx);
    io_uring_prep_poll_add(sqe, w->fd, POLLIN);
    aio_sqe_set_completion(sqe, &w->comp);
    w->armed = true;
}

static void watch_ready(AioCompletion *c, int res, unsigned flags)
{
    AioSignalWatch *w = container_of(c, AioSignalWatch, comp);
    (void)flags;
    w->armed = false;
    if (w->closing) {
        return;
    }
    if (res < 0 && res != -EINTR && res != -ECANCELED) {
        /* Not re-armed: a poll the kernel refuses would be refused again,
         * in a loop that never sleeps. */
        fprintf(stderr, "ublkd: aio: poll of signalfd %d: %s; signals are no longer "
                "watched\n", w->fd, strerror(-res));
        return;
    }
    for (;;) {
        struct signalfd_siginfo si;
        ssize_t n = read(w->fd, &si, sizeof(si));
        if (n != (ssize_t)sizeof(si)) {
            break;            /* EAGAIN: all taken */
        }
        w->cb(w->opaque, &si);
    }
    watch_arm(w);
}

AioSignalWatch *aio_signal_watch_new(AioContext *ctx, const sigset_t *set, AioSignalFn *cb,
                                     void *opaque, Error **errp)
{
    AioSignalWatch *w = calloc(1, sizeof(*w));
    if (!w) {
        error_setg(errp, "aio: out of memory for a signal watch");
        return NULL;
    }
    w->fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (w->fd < 0) {
        error_setg_errno(errp, errno, "aio: signalfd");
        free(w);
        return NULL;
    }
    w->ctx = ctx;
    w->cb = cb;
    w->opaque = opaque;
    w->comp.cb = watch_ready;
    watch_arm(w);
    return w;
}

static void cancel_done(AioCompletion *c, int res, unsigned flags)
{
    (void)c, (void)res, (void)flags;
}

void aio_signal_watch_free(AioSignalWatch *w)
{
    if (!w) {
        return;
    }
    w->closing = true;
    if (w->armed) {
        /* The poll's completion points at w: wait for it to come back
         * (cancelled) before w goes.  The cancel's own completion needs
         * a home that outlives this call: it is static and does nothing. */
        static AioCompletion cancel_comp = { .cb = cancel_done };
        struct io_uring_sqe *sqe = aio_get_sqe(w->ctx);
        io_uring_prep_cancel(sqe, &w->comp, 0);
        aio_sqe_set_completion(sqe, &cancel_comp);
        AIO_WAIT_WHILE(w->ctx, w->armed);
    }
    close(w->fd);
    free(w);
}
