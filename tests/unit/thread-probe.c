/*
 * thread-probe.c - notes which unit-test suites start a thread, so that
 * `make tsan` runs only those.  ThreadSanitizer can report nothing in a
 * suite that never has a second thread (io/coroutine.c makes every
 * coroutine switch a synchronisation point through TSan's fiber API), and
 * those suites were half of its run.  A list kept by hand would go stale as
 * suites gain threads; this one is written by the plain `make check-unit`.
 *
 * Every suite is linked with -Wl,--wrap=pthread_create, so the project's
 * own calls (the tests' and ublk/queue.c's, nbd's, rbd's) come here first.
 * With UNIT_THREAD_PROBE=FILE set, the first one appends the suite's name to
 * FILE (O_APPEND: one short write per suite, run one after another).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int __real_pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                          void *(*fn)(void *), void *arg);
int __wrap_pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                          void *(*fn)(void *), void *arg);

int __wrap_pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                          void *(*fn)(void *), void *arg)
{
    static atomic_bool noted;
    const char *file = getenv("UNIT_THREAD_PROBE");

    if (file && *file && !atomic_exchange(&noted, true)) {
        int saved = errno;
        int fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd >= 0) {
            char line[256];
            size_t n = strlen(program_invocation_short_name);
            if (n < sizeof(line) - 1) {
                memcpy(line, program_invocation_short_name, n);
                line[n++] = '\n';
                if (write(fd, line, n) < 0) {
                    /* the list only narrows make tsan; a lost line runs less */
                }
            }
            close(fd);
        }
        errno = saved;
    }
    return __real_pthread_create(thread, attr, fn, arg);
}
