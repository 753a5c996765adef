/*
 * rbd-lib.c - librados and librbd, loaded on the first rbd open or create.
 *
 * Linked, the two C++ libraries (50-odd dependent libraries, static
 * constructors, ~68k relocations) were most of every ublkd process's start-up
 * (`ublkd list`: 55 ms of CPU with them, 21 without); as with QEMU's
 * block-rbd module, only a process that uses rbd loads them now.  The sonames
 * are fixed, never a path from the environment or an option (the daemon runs
 * as root); RTLD_LOCAL keeps what they bring in out of our symbol lookups.
 * They are never unloaded: librados starts threads and registers destructors.
 * A thread blocked in pthread_once while another loads waits once, at an
 * open or create (the control plane).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "rbd-int.h"

RbdLib rbdlib;

/* Which Debian package ships a soname, for the error's hint. */
static const char *package_of(const char *soname)
{
    if (strcmp(soname, RBD_LIB_RADOS_SONAME) == 0) {
        return "librados2";
    }
    if (strcmp(soname, RBD_LIB_RBD_SONAME) == 0) {
        return "librbd1";
    }
    return NULL;
}

static void *open_lib(const char *soname, Error **errp)
{
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        const char *pkg = package_of(soname);
        error_setg(errp, "rbd: cannot load %s (%s)%s%s", soname, why ? why : "unknown error",
                   pkg ? ": install Debian's " : "", pkg ? pkg : "");
    }
    return h;
}

static void *find_sym(void *h, const char *soname, const char *name, Error **errp)
{
    dlerror();
    void *p = dlsym(h, name);
    if (!p) {
        const char *why = dlerror();
        const char *pkg = package_of(soname);
        error_setg(errp, "rbd: %s has no function %s (%s)%s%s", soname, name,
                   why ? why : "NULL", pkg ? ": install a newer " : "", pkg ? pkg : "");
    }
    return p;
}

int rbd_lib_load_from(RbdLib *lib, const char *rados_soname, const char *rbd_soname,
                      Error **errp)
{
    void *rados = NULL, *rbd = NULL;
    memset(lib, 0, sizeof(*lib));
    rados = open_lib(rados_soname, errp);
    if (!rados) {
        goto fail;
    }
    rbd = open_lib(rbd_soname, errp);
    if (!rbd) {
        goto fail;
    }
    /* Each from its own library's handle: with RTLD_LOCAL a handle also
     * answers for its dependencies, but the table says where each is from. */
#define RBD_LIB_FIND(h, soname, fn) \
    if (!(lib->fn = (__typeof__(lib->fn))find_sym(h, soname, #fn, errp))) { \
        goto fail; \
    }
#define RBD_LIB_FIND_RADOS(fn) RBD_LIB_FIND(rados, rados_soname, fn)
#define RBD_LIB_FIND_RBD(fn) RBD_LIB_FIND(rbd, rbd_soname, fn)
    RBD_LIB_RADOS_SYMBOLS(RBD_LIB_FIND_RADOS)
    RBD_LIB_RBD_SYMBOLS(RBD_LIB_FIND_RBD)
#undef RBD_LIB_FIND_RBD
#undef RBD_LIB_FIND_RADOS
#undef RBD_LIB_FIND
    return 0;
fail:
    memset(lib, 0, sizeof(*lib));
    if (rbd) {
        dlclose(rbd);
    }
    if (rados) {
        dlclose(rados);
    }
    return -ELIBACC;
}

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_result;
static char load_error[512];

static void *load_thread(void *opaque)
{
    Error **errp = opaque;
    load_result = rbd_lib_load_from(&rbdlib, RBD_LIB_RADOS_SONAME, RBD_LIB_RBD_SONAME, errp);
    return NULL;
}

/*
 * On a thread of its own: the first use may come from a coroutine (create
 * runs in one), and the libraries' static constructors overrun its 256 KiB
 * stack.  A thread gets the default stack, whoever asks.
 */
static void load_real(void)
{
    Error *err = NULL;
    pthread_t t;
    int r = pthread_create(&t, NULL, load_thread, &err);
    if (r != 0) {
        load_result = -r;
        snprintf(load_error, sizeof(load_error), "rbd: cannot start a thread to load %s: %s",
                 RBD_LIB_RBD_SONAME, strerror(r));
        return;
    }
    pthread_join(t, NULL);
    if (load_result < 0) {
        snprintf(load_error, sizeof(load_error), "%s", error_get_pretty(err));
        error_free(err);
    }
}

int rbd_lib_load(Error **errp)
{
    pthread_once(&load_once, load_real);
    if (load_result < 0) {
        error_setg(errp, "%s", load_error);
    }
    return load_result;
}
