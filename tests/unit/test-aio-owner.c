/*
 * test-aio-owner.c - a ring belongs to the thread that runs it: a submission
 * from another thread aborts (unless NDEBUG), cross-thread wake-ups do not.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "aio.h"

typedef enum { BY_GET_SQE, BY_SUBMIT, BY_POLL, BY_SET_CURRENT, BY_TIMER } Trespass;

typedef struct {
    AioContext *ctx;
    Trespass how;
} TrespassArg;

static void *trespass_thread(void *opaque)
{
    TrespassArg *a = opaque;
    pthread_setname_np(pthread_self(), "intruder");
    switch (a->how) {
    case BY_GET_SQE: {
        struct io_uring_sqe *sqe = aio_get_sqe(a->ctx);
        io_uring_prep_nop(sqe);
        aio_sqe_set_completion(sqe, NULL);
        break;
    }
    case BY_SUBMIT:
        aio_submit(a->ctx);
        break;
    case BY_POLL:
        aio_poll(a->ctx, false);
        break;
    case BY_SET_CURRENT:
        aio_set_current(a->ctx);
        break;
    case BY_TIMER: {
        static AioTimer t;
        aio_timer_init(&t, a->ctx, NULL, NULL);
        aio_timer_mod(&t, 0);
        break;
    }
    }
    return NULL;
}

/*
 * In a forked child: the main thread ("owner") binds a ring, another
 * thread touches it.  Returns the child's wait status; what it wrote to
 * stderr lands in msg.
 */
static int UNUSED trespass_in_child(Trespass how, char *msg, size_t msg_size)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = { 0, 0 };
        setrlimit(RLIMIT_CORE, &rl);
        dup2(pfd[1], 2);
        close(pfd[0]);
        pthread_setname_np(pthread_self(), "owner");
        AioContext *ctx = aio_context_new(16, NULL);
        if (!ctx) {
            _exit(98);
        }
        aio_set_current(ctx);
        aio_poll(ctx, false);
        TrespassArg a = { ctx, how };
        pthread_t th;
        pthread_create(&th, NULL, trespass_thread, &a);
        pthread_join(th, NULL);
        _exit(0);
    }
    close(pfd[1]);
    size_t got = 0;
    ssize_t n;
    while (got + 1 < msg_size && (n = read(pfd[0], msg + got, msg_size - 1 - got)) > 0) {
        got += (size_t)n;
    }
    msg[got] = 0;
    close(pfd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void expect_abort(Trespass how, const char *what)
{
#ifdef NDEBUG
    (void)how, (void)what;
    skip();                      /* the check is compiled out */
#else
    char msg[1024];
    int st = trespass_in_child(how, msg, sizeof(msg));
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    /* The message names the call and both threads. */
    assert_non_null(strstr(msg, what));
    assert_non_null(strstr(msg, "from thread 'intruder'"));
    assert_non_null(strstr(msg, "belongs to thread 'owner'"));
#endif
}

static void test_get_sqe_from_other_thread_aborts(void **state)
{
    (void)state;
    expect_abort(BY_GET_SQE, "aio_get_sqe");
}

static void test_submit_from_other_thread_aborts(void **state)
{
    (void)state;
    expect_abort(BY_SUBMIT, "aio_submit");
}

static void test_poll_from_other_thread_aborts(void **state)
{
    (void)state;
    expect_abort(BY_POLL, "aio_poll");
}

static void test_set_current_from_other_thread_aborts(void **state)
{
    (void)state;
    expect_abort(BY_SET_CURRENT, "aio_set_current");
}

static void test_timer_from_other_thread_aborts(void **state)
{
    (void)state;
    expect_abort(BY_TIMER, "aio_timer_mod");
}

/* ---- what stays legal ---- */

typedef struct {
    AioContext *ctx;
    AioBH *bh;
    Coroutine *co;
    int bh_runs;
    int co_runs;
    pthread_t co_thread;
} Wakeups;

static void bh_cb(void *opaque)
{
    Wakeups *w = opaque;
    w->bh_runs++;
}

static void oneshot_cb(void *opaque)
{
    Wakeups *w = opaque;
    w->bh_runs += 10;
}

static void coroutine_fn co_fn(void *opaque)
{
    Wakeups *w = opaque;
    w->co_thread = pthread_self();
    w->co_runs++;
    co_yield();
    w->co_runs++;
}

static void *waker_thread(void *opaque)
{
    Wakeups *w = opaque;
    aio_bh_schedule(w->bh);
    aio_bh_schedule_oneshot(w->ctx, oneshot_cb, w);
    aio_co_schedule(w->ctx, w->co);
    aio_notify(w->ctx);
    return NULL;
}

static void *second_waker_thread(void *opaque)
{
    Wakeups *w = opaque;
    aio_co_wake(w->co);          /* its home is the owner's context */
    return NULL;
}

static void test_cross_thread_wakeups_are_legal(void **state)
{
    (void)state;
    Wakeups w = { 0 };
    w.ctx = aio_context_new(16, NULL);
    assert_non_null(w.ctx);
    aio_set_current(w.ctx);
    assert_true(aio_context_is_owner(w.ctx));
    w.bh = aio_bh_new(w.ctx, bh_cb, &w);
    w.co = co_create(co_fn, &w);
    pthread_t th;
    pthread_create(&th, NULL, waker_thread, &w);
    pthread_join(th, NULL);
    while (w.bh_runs < 11 || w.co_runs < 1) {
        aio_poll(w.ctx, true);
    }
    assert_int_equal(w.bh_runs, 11);
    assert_true(pthread_equal(w.co_thread, pthread_self()));
    pthread_create(&th, NULL, second_waker_thread, &w);
    pthread_join(th, NULL);
    while (w.co_runs < 2) {
        aio_poll(w.ctx, true);
    }
    aio_bh_delete(w.bh);
    aio_set_current(NULL);
    aio_context_free(w.ctx);
}

static void *not_owner_thread(void *opaque)
{
    return (void *)(uintptr_t)aio_context_is_owner(opaque);
}

/* A context created on one thread belongs to the first that runs it. */
static void test_owner_is_first_user(void **state)
{
    (void)state;
    AioContext *ctx = aio_context_new(16, NULL);
    assert_non_null(ctx);
    assert_true(aio_context_is_owner(ctx));      /* nobody yet */
    aio_poll(ctx, false);
    void *ret;
    pthread_t th;
    pthread_create(&th, NULL, not_owner_thread, ctx);
    pthread_join(th, &ret);
    assert_false((uintptr_t)ret);
    assert_true(aio_context_is_owner(ctx));
    aio_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_sqe_from_other_thread_aborts),
        cmocka_unit_test(test_submit_from_other_thread_aborts),
        cmocka_unit_test(test_poll_from_other_thread_aborts),
        cmocka_unit_test(test_set_current_from_other_thread_aborts),
        cmocka_unit_test(test_timer_from_other_thread_aborts),
        cmocka_unit_test(test_cross_thread_wakeups_are_legal),
        cmocka_unit_test(test_owner_is_first_user),
    };
    return cmocka_run_group_tests_name("aio-owner", tests, NULL, NULL);
}
